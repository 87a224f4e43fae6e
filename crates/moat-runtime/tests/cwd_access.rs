//! The working directory when root in the runtime and the process's user do not reach the same
//! directories (runc 1.1's "chdir to cwd may fail before setuid; retry after"): the init enters
//! `process.cwd` as root first and, when root is refused, once more after switching to the
//! process's uid/gid. Root is made unable to traverse a directory by running the runtime with
//! CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH dropped from its bounding set (`capsh --drop`), as a
//! root-squashed NFS export or a user namespace not mapping the directory's owner would. Every
//! case runs runc the same way on the same bundle and compares.

mod common;
use common::support::which;
use common::*;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::json;

const NO_DAC: &str = "--drop=cap_dac_override,cap_dac_read_search";

/// `prog --root ROOT run --bundle B ID` under `capsh` without the DAC capabilities.
fn run_without_dac(prog: &Path, root: &Path, b: &Bundle, id: &str) -> Output {
    Command::new("capsh")
        .args([NO_DAC, "--", "-c", "exec \"$0\" \"$@\""])
        .arg(prog)
        .arg("--root")
        .arg(root)
        .args(["run", "--bundle"])
        .arg(b.path())
        .arg(id)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A bundle whose process runs as 1000:1000 in `cwd` (`/data` or `/data/sub`), where `/data` has
/// mode `mode` and owner `owner`.
fn bundle(cid: &str, owner: u32, mode: u32, cwd: &str) -> Bundle {
    let mut b = Bundle::new(&["sh", "-c", "pwd; id -u; ls"]);
    let data = b.rootfs().join("data");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    std::fs::write(data.join("sub/file"), "x").unwrap();
    for p in [data.join("sub/file"), data.join("sub"), data.clone()] {
        std::os::unix::fs::chown(&p, Some(owner), Some(owner)).unwrap();
    }
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(mode)).unwrap();
    b.spec["process"]["user"] = json!({"uid": 1000, "gid": 1000});
    b.spec["process"]["cwd"] = json!(cwd);
    // Root without CAP_DAC_OVERRIDE cannot create a directory in a cgroup root (mode 0555):
    // both runtimes get a parent made beforehand.
    cgroup_parents();
    b.spec["linux"]["cgroupsPath"] = json!(format!("/moat/{cid}"));
    // runc builds its /sys/fs/cgroup of directories it cannot create without the capabilities.
    b.spec["mounts"]
        .as_array_mut()
        .unwrap()
        .retain(|m| m["destination"] != "/sys/fs/cgroup");
    // Only capabilities the runtime holds under `capsh` (the default set has CAP_DAC_OVERRIDE).
    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    b.spec["process"]["capabilities"] =
        json!({"bounding": caps, "effective": caps, "permitted": caps});
    b.save();
    b
}

/// `/moat` in every cgroup hierarchy (the v2 root or each v1 one).
fn cgroup_parents() {
    let base = Path::new("/sys/fs/cgroup");
    if base.join("cgroup.procs").exists() {
        std::fs::create_dir_all(base.join("moat")).unwrap();
        return;
    }
    for e in std::fs::read_dir(base).unwrap().flatten() {
        let p = e.path();
        if !p.is_symlink() && p.join("cgroup.procs").exists() {
            std::fs::create_dir_all(p.join("moat")).unwrap();
        }
    }
}

fn have_capsh() -> bool {
    if which("capsh").is_none() {
        eprintln!("SKIP: capsh (libcap2-bin) is not installed");
        return false;
    }
    true
}

/// Compare with runc on the same bundle, run the same way; skipped with a reason without runc.
fn same_as_runc(b: &Bundle, cid: &str, moat: &Output) {
    let Some(runc) = Runc::new() else { return };
    let r = run_without_dac(&runc.bin, runc.root.path(), b, cid);
    let _ = runc.cmd().args(["delete", "--force", cid]).output();
    assert_eq!(
        (r.status.code(), text(&r.stdout)),
        (moat.status.code(), text(&moat.stdout)),
        "runc differs; runc's stderr: {}",
        text(&r.stderr)
    );
}

#[test]
fn cwd_only_the_process_user_reaches_is_entered_after_setuid() {
    if !have_capsh() {
        return;
    }
    let rt = Rt::new();
    let cid = id("cwd-user");
    // Root may see /data but not search it: its chdir fails, the process's succeeds.
    let b = bundle(&cid, 1000, 0o700, "/data");
    let o = run_without_dac(Path::new(BIN), rt.root.path(), &b, &cid);
    assert!(o.status.success(), "moat: {}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "/data\n1000\nsub\n");
    assert_clean(&rt, &cid, None);
    same_as_runc(&b, &cid, &o);
    // Below it, root cannot even look the directory up. runc 1.1.5 stops earlier here, at its
    // `MkdirAll` of the cwd as root ("mkdir /data/sub: permission denied"), before its chdir
    // and retry; moat creates only what root can reach and lets the retry decide.
    let cid = id("cwd-user-nested");
    let b = bundle(&cid, 1000, 0o700, "/data/sub");
    let o = run_without_dac(Path::new(BIN), rt.root.path(), &b, &cid);
    assert!(o.status.success(), "moat: {}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "/data/sub\n1000\nfile\n");
    assert_clean(&rt, &cid, None);
}

#[test]
fn cwd_only_root_reaches_is_entered_before_setuid() {
    if !have_capsh() {
        return;
    }
    // Only root (as /data's owner) may search /data: the process (uid 1000, no DAC capability)
    // could not enter /data/sub by itself, but a directory entered before setuid stays usable.
    let rt = Rt::new();
    let cid = id("cwd-root");
    let b = bundle(&cid, 0, 0o700, "/data/sub");
    let o = run_without_dac(Path::new(BIN), rt.root.path(), &b, &cid);
    assert!(o.status.success(), "moat: {}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "/data/sub\n1000\nfile\n");
    assert_clean(&rt, &cid, None);
    same_as_runc(&b, &cid, &o);
}

#[test]
fn cwd_nobody_reaches_is_one_error_naming_it() {
    if !have_capsh() {
        return;
    }
    // Owned by 2000: neither root without DAC capabilities nor uid 1000 may search it.
    let rt = Rt::new();
    let cid = id("cwd-none");
    let b = bundle(&cid, 2000, 0o700, "/data/sub");
    let o = run_without_dac(Path::new(BIN), rt.root.path(), &b, &cid);
    let err = text(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error:")
            && err.contains("/data/sub")
            && err.contains("as uid 1000")
            && err.contains("Permission denied"),
        "{err}"
    );
    assert_clean(&rt, &cid, None);
    if let Some(runc) = Runc::new() {
        let r = run_without_dac(&runc.bin, runc.root.path(), &b, &cid);
        let _ = runc.cmd().args(["delete", "--force", &cid]).output();
        assert!(!r.status.success(), "runc entered it: {}", text(&r.stdout));
        assert!(text(&r.stderr).contains("/data/sub"), "{}", text(&r.stderr));
    }
}
