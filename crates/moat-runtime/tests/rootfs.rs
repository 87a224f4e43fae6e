//! The root filesystem: read-only root, mounts of every kind, devices, masked and read-only paths,
//! sysctls, no-pivot, propagation, and targets resolved inside the rootfs.

mod common;
use common::*;
use serde_json::json;
use std::path::PathBuf;

#[test]
fn readonly_root_rejects_writes() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.spec["root"]["readonly"] = json!(true);
    b.sh("touch /x 2>&1 || echo refused; touch /dev/shm/ok && echo tmpfs-writable");
    let out = rt.run_ok(&b, &id("ro"));
    assert!(
        out.contains("Read-only file system")
            && out.contains("refused")
            && out.contains("tmpfs-writable"),
        "{out}"
    );
}

#[test]
fn bind_mounts_ro_rw_and_files() {
    let rt = Rt::new();
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("data"), "from-host\n").unwrap();
    let file = host.path().join("single");
    std::fs::write(&file, "one-file\n").unwrap();
    let mut b = Bundle::new(&["true"]);
    let mounts = b.spec["mounts"].as_array_mut().unwrap();
    mounts.push(json!({"destination": "/data/ro", "type": "bind", "source": host.path(), "options": ["rbind", "ro", "nosuid"]}));
    mounts.push(json!({"destination": "/data/rw", "type": "none", "source": host.path(), "options": ["bind"]}));
    mounts.push(json!({"destination": "/etc/single", "type": "bind", "source": file, "options": ["bind", "ro"]}));
    b.sh("cat /data/ro/data /etc/single; echo x > /data/ro/new 2>/dev/null || echo ro-refused; echo written > /data/rw/new && echo rw-ok; grep ' /data/ro ' /proc/mounts");
    let out = rt.run_ok(&b, &id("bind"));
    assert!(
        out.contains("from-host\none-file\nro-refused\nrw-ok\n"),
        "{out}"
    );
    assert!(out.lines().last().unwrap().contains("ro,nosuid"), "{out}");
    assert_eq!(
        std::fs::read_to_string(host.path().join("new")).unwrap(),
        "written\n"
    );
}

#[test]
fn tmpfs_with_size_and_mode_and_flags() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.spec["mounts"].as_array_mut().unwrap().push(json!({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m", "mode=1770", "noexec", "nodev"]}));
    b.sh("grep ' /scratch ' /proc/mounts; stat -c %a /scratch; dd if=/dev/zero of=/scratch/big bs=1k count=2048 2>/dev/null; stat -c %s /scratch/big");
    let out = rt.run_ok(&b, &id("tmpfs"));
    let line = out.lines().next().unwrap();
    assert!(
        line.contains("noexec") && line.contains("nodev") && line.contains("size=1024k"),
        "{out}"
    );
    assert!(out.contains("\n1770\n"), "{out}");
    let written: u64 = out.lines().last().unwrap().parse().unwrap();
    assert!(
        written <= 1024 * 1024,
        "the 1m size limit was not enforced: {out}"
    );
}

#[test]
fn proc_sys_devpts_mqueue_cgroup_mounts() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.sh("for m in /proc /sys /dev/pts /dev/mqueue /dev/shm /sys/fs/cgroup; do grep -q \" $m \" /proc/mounts && echo ok $m; done; ls /sys/fs/cgroup | head -3");
    let out = rt.run_ok(&b, &id("kinds"));
    for m in [
        "/proc",
        "/sys",
        "/dev/pts",
        "/dev/mqueue",
        "/dev/shm",
        "/sys/fs/cgroup",
    ] {
        assert!(out.contains(&format!("ok {m}\n")), "{m} not mounted: {out}");
    }
}

#[test]
fn default_devices_and_symlinks() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.sh("ls -l /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty | awk '{print $1, $5, $6, $NF}'; for l in ptmx fd stdin stdout stderr; do readlink /dev/$l; done; echo hi > /dev/null && head -c 4 /dev/zero | wc -c");
    let out = rt.run_ok(&b, &id("dev"));
    assert!(out.contains("crw-rw-rw- 1, 3 /dev/null"), "{out}");
    assert!(out.contains("crw-rw-rw- 5, 0 /dev/tty"), "{out}");
    assert!(
        out.contains(
            "pts/ptmx\n/proc/self/fd\n/proc/self/fd/0\n/proc/self/fd/1\n/proc/self/fd/2\n"
        ),
        "{out}"
    );
    assert!(out.trim_end().ends_with('4'), "{out}");
}

#[test]
fn linux_devices_are_created_with_mode_and_owner() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.spec["linux"]["devices"] = json!([{"path": "/dev/mydev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o640, "uid": 1000, "gid": 1001}]);
    b.sh("stat -c '%F %t:%T %a %u:%g' /dev/mydev/fuse");
    let out = rt.run_ok(&b, &id("devs"));
    assert_eq!(out.trim(), "character special file a:e5 640 1000:1001");
}

#[test]
fn masked_and_readonly_paths() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    std::fs::create_dir_all(b.rootfs().join("secret")).unwrap();
    std::fs::write(b.rootfs().join("secret/key"), "hidden").unwrap();
    std::fs::create_dir_all(b.rootfs().join("frozen")).unwrap();
    std::fs::write(b.rootfs().join("etc/masked-file"), "hidden").unwrap();
    b.spec["linux"]["maskedPaths"]
        .as_array_mut()
        .unwrap()
        .push(json!("/secret"));
    b.spec["linux"]["maskedPaths"]
        .as_array_mut()
        .unwrap()
        .push(json!("/etc/masked-file"));
    b.spec["linux"]["readonlyPaths"]
        .as_array_mut()
        .unwrap()
        .push(json!("/frozen"));
    b.sh("wc -c < /etc/masked-file; ls /secret | wc -l; touch /frozen/x 2>/dev/null || echo frozen-ro; echo 1 > /proc/sys/kernel/domainname 2>/dev/null || echo procsys-ro");
    let out = rt.run_ok(&b, &id("mask"));
    assert_eq!(out, "0\n0\nfrozen-ro\nprocsys-ro\n");
}

#[test]
fn sysctl_is_set_inside() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.spec["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1", "kernel.msgmax": "12345"});
    b.spec["linux"]["readonlyPaths"] = json!([]);
    b.sh("cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/msgmax");
    let out = rt.run_ok(&b, &id("sysctl"));
    assert_eq!(out, "1\n12345\n");
}

#[test]
fn no_pivot_uses_move_and_chroot() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.sh("ls /; echo ok");
    let id = id("nopivot");
    let o = rt
        .cmd()
        .args(["run", "--no-pivot", "--bundle"])
        .arg(b.path())
        .arg(&id)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("bin\n") && out.ends_with("ok\n"), "{out}");
    assert_clean(&rt, &id, Some(b.path()));
}

#[test]
fn rootfs_propagation_shared_and_mount_propagation() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.spec["linux"]["rootfsPropagation"] = json!("shared");
    b.spec["mounts"].as_array_mut().unwrap().push(json!({"destination": "/prop", "type": "tmpfs", "source": "tmpfs", "options": ["rprivate"]}));
    b.sh("grep -E ' / | /prop ' /proc/self/mountinfo");
    let out = rt.run_ok(&b, &id("prop"));
    let root = out
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .unwrap();
    assert!(root.contains("shared:"), "root not shared: {out}");
    let prop = out
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/prop"))
        .unwrap();
    assert!(
        !prop.contains("shared:") && !prop.contains("master:"),
        "/prop not private: {out}"
    );
}

/// `rootfsPropagation: rshared` with a bidirectional (`rshared`) volume, as containerd asks for a
/// Kubernetes `mountPropagation: Bidirectional` volume: a mount made in the container reaches the
/// host, and a mount made on the host reaches the container (runc's rules; critest's "mount with
/// 'rshared'" spec).
#[test]
fn rootfs_propagation_rshared_reaches_the_host() {
    let rt = Rt::new();
    let host = tempfile::tempdir().unwrap();
    let vol = host.path().to_owned();
    let sh = |args: &[&str]| {
        let st = std::process::Command::new(args[0])
            .args(&args[1..])
            .status()
            .unwrap();
        assert!(st.success(), "{args:?}");
    };
    let v = vol.to_str().unwrap();
    sh(&["mount", "--bind", v, v]);
    sh(&["mount", "--make-rshared", v]);
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            for sub in ["from-ctr", "from-host", ""] {
                let _ = nix::mount::umount2(&self.0.join(sub), nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
    let _guard = Unmount(vol.clone());
    std::fs::create_dir_all(vol.join("from-ctr")).unwrap();
    std::fs::create_dir_all(vol.join("from-host")).unwrap();

    let mut b = Bundle::new(&["true"]);
    b.spec["linux"]["rootfsPropagation"] = json!("rshared");
    // mount(2) inside: CAP_SYS_ADMIN and no seccomp filter (the default one refuses mount).
    b.spec["linux"].as_object_mut().unwrap().remove("seccomp");
    for set in ["bounding", "effective", "permitted"] {
        b.spec["process"]["capabilities"][set]
            .as_array_mut()
            .unwrap()
            .push(json!("CAP_SYS_ADMIN"));
    }
    b.spec["mounts"].as_array_mut().unwrap().push(
        json!({"destination": "/vol", "type": "bind", "source": vol, "options": ["rbind", "rshared"]}),
    );
    b.sh(
        "mount -t tmpfs ctr /vol/from-ctr && echo made > /vol/from-ctr/f && \
         for i in $(seq 100); do [ -f /vol/from-host/h ] && break; sleep 0.1; done; \
         cat /vol/from-host/h > /vol/from-ctr/seen",
    );
    let id = id("rshared");
    rt.create(&b, &id);
    // The host's mount, made while the container runs, must reach it.
    sh(&[
        "mount",
        "-t",
        "tmpfs",
        "host",
        vol.join("from-host").to_str().unwrap(),
    ]);
    std::fs::write(vol.join("from-host/h"), "from the host\n").unwrap();
    rt.ok(&["start", &id]);
    rt.wait_status(&id, "stopped");
    rt.ok(&["delete", &id]);
    assert_eq!(
        std::fs::read_to_string(vol.join("from-ctr/f")).unwrap_or_default(),
        "made\n",
        "the container's mount did not reach the host"
    );
    assert_eq!(
        std::fs::read_to_string(vol.join("from-ctr/seen")).unwrap_or_default(),
        "from the host\n",
        "the host's mount did not reach the container"
    );
}

/// CVE-2021-30465 class: a mount target that is a symlink pointing out of the rootfs must be
/// resolved inside the rootfs, never on the host.
#[test]
fn mount_target_symlink_cannot_escape_rootfs() {
    let rt = Rt::new();
    let host = tempfile::tempdir().unwrap();
    let mut b = Bundle::new(&["true"]);
    // /escape -> <host dir> (absolute) and /up -> ../../../../../.. + host dir (relative).
    std::os::unix::fs::symlink(host.path(), b.rootfs().join("escape")).unwrap();
    let rel = format!("../../../../../../../..{}", host.path().display());
    std::os::unix::fs::symlink(&rel, b.rootfs().join("up")).unwrap();
    let mounts = b.spec["mounts"].as_array_mut().unwrap();
    mounts.push(json!({"destination": "/escape/sub", "type": "tmpfs", "source": "tmpfs"}));
    mounts.push(json!({"destination": "/up/sub2", "type": "tmpfs", "source": "tmpfs"}));
    b.sh("touch /escape/sub/in-container /up/sub2/in-container2; echo done");
    let id = id("symlink");
    let out = rt.run_ok(&b, &id);
    assert_eq!(out, "done\n");
    assert_eq!(
        std::fs::read_dir(host.path()).unwrap().count(),
        0,
        "a mount target escaped to the host dir"
    );
    // The targets were created inside the rootfs instead.
    assert!(b
        .rootfs()
        .join(host.path().strip_prefix("/").unwrap())
        .join("sub")
        .is_dir());
    assert_clean(&rt, &id, Some(b.path()));
}
