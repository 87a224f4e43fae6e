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

/// Container root mapped to an unprivileged host uid: create works (the exec fifo is opened by
/// the runtime, not reached by the init through the runtime's private state directory), as with
/// runc; and a time namespace's offsets are written inside such a user namespace.
#[test]
fn user_namespace_with_unprivileged_root_and_time_offsets() {
    use std::os::unix::fs::PermissionsExt;
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    // The unprivileged root must be able to reach the rootfs, as with runc.
    std::fs::set_permissions(b.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    b.spec["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "user"}));
    let map = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    b.spec["linux"]["uidMappings"] = map.clone();
    b.spec["linux"]["gidMappings"] = map;
    b.sh("id -u; cat /proc/self/uid_map; stat -c %u /proc/1");
    let out = rt.run_ok(&b, &id("userns"));
    let want = "0\n         0     100000      65536\n0\n";
    assert_eq!(out, want);
    if let Some((code, rout, rerr)) = runc_run(&b, &id("userns-runc")) {
        assert_eq!((code, rout.as_str()), (0, want), "runc: {rerr}");
    }
    // Time namespace (runc 1.1 has none): boottime moved two days ahead, monotonic one.
    b.spec["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "time"}));
    b.spec["linux"]["timeOffsets"] = json!({
        "boottime": {"secs": 172800, "nanosecs": 0},
        "monotonic": {"secs": 86400, "nanosecs": 0}
    });
    b.sh("cut -d. -f1 /proc/uptime");
    let host_up: u64 = std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let up: u64 = rt.run_ok(&b, &id("timens")).trim().parse().unwrap();
    assert!(
        (host_up + 172800..host_up + 172800 + 60).contains(&up),
        "uptime {up} in the container, {host_up} on the host"
    );
}

/// `ociVersion` must be a version moat implements: garbage and other majors are refused at
/// create with the field named, and nothing is left behind.
#[test]
fn unsupported_oci_versions_are_refused_at_create() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    for (v, why) in [
        ("banana", "not a semantic version"),
        ("2.0.0", "not supported"),
        ("0.6.0", "not supported"),
    ] {
        b.spec["ociVersion"] = json!(v);
        b.save();
        let id = id("ociver");
        let o = rt.create_out(&b, &id, &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{v} accepted");
        assert!(
            err.starts_with("error:") && err.contains("ociVersion") && err.contains(why),
            "{v}: {err}"
        );
        assert_clean(&rt, &id, Some(b.path()));
    }
    for v in ["1.0.2-dev", "1.1.0", "1.2.0"] {
        b.spec["ociVersion"] = json!(v);
        b.save();
        rt.run_ok(&b, &id("ociver"));
    }
}
