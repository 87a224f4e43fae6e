//! More runtime-spec fields, each from inside a real container: `tmpcopyup` on a tmpfs (against
//! runc, which has it), `process.execCPUAffinity` of an exec'd process, and the fields moat refuses
//! rather than ignore (idmapped mounts, `linux.netDevices`), with nothing left behind.

mod common;
use common::*;
use serde_json::json;

#[test]
fn tmpcopyup_starts_the_tmpfs_with_the_directorys_contents() {
    use std::os::unix::fs::PermissionsExt;
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    let dir = b.rootfs().join("etc/seed");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("a"), "alpha\n").unwrap();
    std::fs::set_permissions(dir.join("a"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(dir.join("a"), Some(1), Some(2)).unwrap();
    std::fs::write(dir.join("sub/b"), "beta\n").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.join("l")).unwrap();
    b.spec["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/etc/seed", "type": "tmpfs", "source": "tmpfs",
        "options": ["nosuid", "nodev", "tmpcopyup"]
    }));
    // A read-only one is filled first, then made read-only.
    std::fs::create_dir_all(b.rootfs().join("etc/seed-ro")).unwrap();
    std::fs::write(b.rootfs().join("etc/seed-ro/f"), "ro-content\n").unwrap();
    b.spec["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/etc/seed-ro", "type": "tmpfs", "source": "tmpfs",
        "options": ["ro", "tmpcopyup"]
    }));
    b.sh(concat!(
        "stat -c '%a %u:%g' /etc/seed/a; cat /etc/seed/a /etc/seed/sub/b; readlink /etc/seed/l; ",
        "grep ' /etc/seed ' /proc/mounts | cut -d' ' -f3; echo new > /etc/seed/a; ",
        "cat /etc/seed-ro/f; touch /etc/seed-ro/x 2>/dev/null || echo read-only"
    ));
    let want = "640 1:2\nalpha\nbeta\n/etc/passwd\ntmpfs\nro-content\nread-only\n";
    assert_eq!(rt.run_ok(&b, &id("copyup")), want);
    // The write went to the tmpfs, not the image.
    assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "alpha\n");
    if let Some((code, out, err)) = runc_run(&b, &id("copyup-runc")) {
        assert_eq!((code, out.as_str()), (0, want), "runc: {err}");
    }
}

#[test]
fn exec_cpu_affinity_applies_to_the_exec_process() {
    let rt = Rt::new();
    let b = Bundle::new(&["sleep", "1000"]);
    let id = id("affinity");
    rt.create(&b, &id);
    rt.ok(&["start", &id]);
    let p = b.path().join("process.json");
    let process = json!({
        "user": {"uid": 0, "gid": 0}, "cwd": "/", "env": ["PATH=/bin"],
        "args": ["sh", "-c", "grep Cpus_allowed_list /proc/self/status"],
        "execCPUAffinity": {"initial": "0", "final": "0"}
    });
    std::fs::write(&p, serde_json::to_vec(&process).unwrap()).unwrap();
    let out = rt.ok(&["exec", "--process", p.to_str().unwrap(), &id]);
    assert_eq!(out.split_whitespace().last(), Some("0"), "{out}");
    rt.ok(&["delete", "--force", &id]);
}

#[test]
fn idmapped_mounts_and_net_devices_are_refused_not_ignored() {
    let rt = Rt::new();
    let src = tempfile::tempdir().unwrap();
    let map = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    let mut b = Bundle::new(&["true"]);
    b.spec["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/data", "type": "bind", "source": src.path(),
        "options": ["bind"], "uidMappings": map, "gidMappings": map
    }));
    b.save();
    let id1 = id("idmap");
    let o = rt.create_out(&b, &id1, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.starts_with("error:") && err.contains("idmapped"),
        "{err}"
    );
    assert_clean(&rt, &id1, Some(b.path()));

    let mut b = Bundle::new(&["true"]);
    b.spec["linux"]["netDevices"] = json!({"dummy0": {"name": "eth1"}});
    b.save();
    let id2 = id("netdev");
    let o = rt.create_out(&b, &id2, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("linux.netDevices"),
        "{err}"
    );
    assert_clean(&rt, &id2, Some(b.path()));
}

/// `linux.devices` that repeat a default device (/dev/null, /dev/tty, /dev/ptmx, as Docker and
/// some generators write them) are accepted and the devices work.
#[test]
fn linux_devices_repeating_the_defaults_are_accepted() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.spec["linux"]["devices"] = json!([
        {"path": "/dev/null", "type": "c", "major": 1, "minor": 3, "fileMode": 438, "uid": 0, "gid": 0},
        {"path": "/dev/tty", "type": "c", "major": 5, "minor": 0, "fileMode": 438},
        {"path": "/dev/ptmx", "type": "c", "major": 5, "minor": 2, "fileMode": 438}
    ]);
    b.sh("echo x > /dev/null && stat -c '%t:%T' /dev/null /dev/tty /dev/ptmx && echo ok");
    assert_eq!(rt.run_ok(&b, &id("devrepeat")), "1:3\n5:0\n5:2\nok\n");
}
