//! Runtime-spec fields as runc honours them, each checked from inside a real container and, where
//! runc is the reference, against runc 1.1 on the same bundle.

mod common;
use common::*;
use serde_json::json;
use std::process::{Command, Stdio};

/// `runc run` of the same bundle in a private root: (exit code, stdout, stderr), or None (with a
/// printed reason) where runc is not installed.
fn runc_run(b: &Bundle, id: &str) -> Option<(i32, String, String)> {
    let Some(runc) = support::which("runc") else {
        eprintln!("runc not installed: the runc reference check is skipped");
        return None;
    };
    let root = tempfile::tempdir().unwrap();
    let o = Command::new(&runc)
        .arg("--root")
        .arg(root.path())
        .args(["run", "--bundle"])
        .arg(b.path())
        .arg(id)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = Command::new(&runc)
        .arg("--root")
        .arg(root.path())
        .args(["delete", "--force", id])
        .output();
    Some((
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    ))
}

/// `linux.resources.devices: []` is "no rules beyond the defaults", like an absent list: the
/// standard devices work, any other device is denied (runc appends its defaults to deny-all).
#[test]
fn an_empty_or_absent_device_list_keeps_the_default_devices() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.sh(concat!(
        "echo x > /dev/null && head -c 4 /dev/zero | wc -c && head -c 4 /dev/urandom | wc -c; ",
        "rm -f /tmp/sda; mknod /tmp/sda b 8 0 && (head -c 1 /tmp/sda >/dev/null 2>&1 && echo sda=open || echo sda=denied)"
    ));
    for devices in [Some(json!([])), None] {
        match &devices {
            Some(d) => b.spec["linux"]["resources"]["devices"] = d.clone(),
            None => {
                b.spec["linux"]["resources"]
                    .as_object_mut()
                    .unwrap()
                    .remove("devices");
            }
        }
        b.save();
        let out = rt.run_ok(&b, &id("devempty"));
        assert_eq!(out, "4\n4\nsda=denied\n", "devices {devices:?}");
        if let Some((code, rout, rerr)) = runc_run(&b, &id("devempty-runc")) {
            assert_eq!((code, rout.as_str()), (0, out.as_str()), "runc: {rerr}");
        }
    }
    // linux.devices entries stay usable whatever the list holds.
    b.spec["linux"]["resources"]["devices"] = json!([{"allow": false, "access": "rwm"}]);
    b.spec["linux"]["devices"] =
        json!([{"path": "/dev/loopctl", "type": "c", "major": 1, "minor": 3}]);
    b.sh("echo x > /dev/loopctl && echo x > /dev/null && echo ok");
    assert_eq!(rt.run_ok(&b, &id("devlist")), "ok\n");
}

/// A rootfs whose /proc (or /sys) is a symlink is refused at create ("must be mounted on
/// ordinary directory", as runc says), and nothing is left behind.
#[test]
fn proc_or_sys_through_a_symlink_is_refused() {
    let rt = Rt::new();
    for dir in ["proc", "sys"] {
        let b = Bundle::new(&["true"]);
        let root = b.rootfs();
        std::fs::remove_dir(root.join(dir)).unwrap();
        std::fs::create_dir(root.join("elsewhere")).unwrap();
        std::os::unix::fs::symlink("elsewhere", root.join(dir)).unwrap();
        let id = id("procsym");
        let o = rt.create_out(&b, &id, &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "/{dir} symlink accepted");
        assert!(
            err.starts_with("error:") && err.contains("must be mounted on ordinary directory"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        assert_clean(&rt, &id, Some(b.path()));
        if let Some((code, _, rerr)) = runc_run(&b, &id) {
            assert_ne!(code, 0, "runc accepted a /{dir} symlink");
            assert!(
                rerr.contains("must be mounted on ordinary directory"),
                "{rerr}"
            );
        }
    }
}
