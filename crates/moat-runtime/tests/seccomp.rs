//! Seccomp: configured errno and kill actions, argument conditions, the notify listener, the
//! default profile (Docker's) blocking what Docker blocks while busybox keeps working, exec'd
//! processes filtered too, and the filter installed only after the runtime's own system calls.

mod common;
use common::*;
use serde_json::json;

fn allow_all_but(rules: serde_json::Value) -> serde_json::Value {
    json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"], "syscalls": rules})
}

#[test]
fn errno_and_kill_actions() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.spec["linux"]["seccomp"] = allow_all_but(json!([
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 18},
        {"names": ["rmdir"], "action": "SCMP_ACT_KILL_PROCESS"}
    ]));
    b.sh("mkdir /tmp/x 2>&1; echo mkdir=$?; (rmdir /tmp); echo rmdir=$?");
    let out = rt.run_ok(&b, &id("scerrno"));
    assert!(
        out.contains("Invalid cross-device link"),
        "mkdir should fail with errno 18 (EXDEV): {out}"
    );
    assert!(
        out.contains("rmdir=159"),
        "rmdir should be killed by SIGSYS (128+31): {out}"
    );
}

#[test]
fn argument_conditions() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    // personality(PER_LINUX32 = 8) is refused; personality(0) and queries are allowed.
    b.spec["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                      "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}]
    });
    b.sh("linux32 true 2>/dev/null; echo linux32=$?; linux64 true; echo linux64=$?");
    let out = rt.run_ok(&b, &id("scargs"));
    assert!(out.contains("linux64=0"), "{out}");
    assert!(
        !out.contains("linux32=0"),
        "personality(8) should be refused: {out}"
    );
}

#[test]
fn default_profile_blocks_what_docker_blocks_and_busybox_works() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    assert!(
        b.spec["linux"]["seccomp"]["syscalls"]
            .as_array()
            .is_some_and(|a| !a.is_empty()),
        "spec has no default profile"
    );
    // Give CAP_SYS_ADMIN so that only seccomp stands in the way of mount and unshare.
    for set in ["bounding", "effective", "permitted"] {
        b.spec["process"]["capabilities"][set]
            .as_array_mut()
            .unwrap()
            .push(json!("CAP_SYS_ADMIN"));
    }
    b.sh("unshare -n true 2>&1; echo unshare=$?; mkdir -p /mnt/x; mount -t tmpfs t /mnt/x 2>&1; echo mount=$?; ls / >/dev/null && echo ls-ok; echo hi | sed s/hi/ho/; ps >/dev/null && echo ps-ok; wget --help >/dev/null 2>&1; echo done");
    let out = rt.run_ok(&b, &id("scdefault"));
    assert!(
        out.contains("unshare=1") || !out.contains("unshare=0"),
        "unshare must be blocked: {out}"
    );
    assert!(!out.contains("mount=0"), "mount must be blocked: {out}");
    assert!(
        out.contains("ls-ok\nho\nps-ok\n"),
        "busybox utilities broke: {out}"
    );
    // Without the profile, the same container may mount (proves the block is seccomp's).
    b.spec["linux"].as_object_mut().unwrap().remove("seccomp");
    b.save();
    let out = rt.run_ok(&b, &id("scnone"));
    assert!(out.contains("mount=0"), "{out}");
}

#[test]
fn exec_gets_the_filter_and_runtime_syscalls_are_not_filtered() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["sleep", "1000"]);
    // Deny, with a distinctive errno, calls the runtime itself makes while setting up the
    // container: sethostname, setgroups, setresuid/gid, capset, fchdir. The container must
    // still start (the filter comes last) and its process must see them denied.
    b.spec["hostname"] = json!("filtered");
    b.spec["process"]["user"] = json!({"uid": 1000, "gid": 1000});
    b.spec["process"]["noNewPrivileges"] = json!(true);
    b.spec["linux"]["seccomp"] = allow_all_but(json!([
        {"names": ["sethostname", "setgroups", "setresuid", "setresgid", "capset", "fchdir", "mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 18}
    ]));
    b.save();
    let id = id("scorder");
    rt.create(&b, &id);
    rt.ok(&["start", &id]);
    let out = rt.ok(&[
        "exec",
        &id,
        "sh",
        "-c",
        "cat /proc/sys/kernel/hostname; id -u; mkdir /tmp/y 2>&1; echo mkdir=$?",
    ]);
    assert!(out.starts_with("filtered\n1000\n"), "{out}");
    assert!(
        out.contains("Invalid cross-device link"),
        "exec'd process not filtered: {out}"
    );
    rt.ok(&["delete", "--force", &id]);
    assert_clean(&rt, &id, Some(b.path()));
}

#[test]
fn notify_listener_receives_the_fd_and_answers() {
    use std::os::fd::AsRawFd;
    let rt = Rt::new();
    let d = tempfile::tempdir().unwrap();
    let sock = d.path().join("listener.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let mut b = Bundle::new(&["true"]);
    b.spec["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "listenerPath": sock,
        "listenerMetadata": "test-metadata",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}]
    });
    b.sh("mkdir /tmp/z 2>&1; echo mkdir=$?");
    let id = id("scnotify");
    let handler = std::thread::spawn(move || {
        let (payload, fd) = accept_fd(&listener);
        let state: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        // struct seccomp_notif (80 bytes) and seccomp_notif_resp (24 bytes).
        let mut notif = [0u8; 80];
        // SAFETY: SECCOMP_IOCTL_NOTIF_RECV fills a seccomp_notif of 80 bytes.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), 0xc050_2100u64 as _, notif.as_mut_ptr()) };
        assert_eq!(r, 0, "NOTIF_RECV: {}", std::io::Error::last_os_error());
        let nr = i32::from_ne_bytes(notif[16..20].try_into().unwrap());
        let mut resp = [0u8; 24];
        resp[..8].copy_from_slice(&notif[..8]);
        resp[16..20].copy_from_slice(&(-18i32).to_ne_bytes());
        // SAFETY: SECCOMP_IOCTL_NOTIF_SEND reads a seccomp_notif_resp of 24 bytes.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), 0xc018_2101u64 as _, resp.as_ptr()) };
        assert_eq!(r, 0, "NOTIF_SEND: {}", std::io::Error::last_os_error());
        (state, nr)
    });
    let out = rt.run_ok(&b, &id);
    let (state, nr) = handler.join().unwrap();
    assert!(
        nr == libc::SYS_mkdir as i32 || nr == libc::SYS_mkdirat as i32,
        "notified syscall {nr}"
    );
    assert_eq!(state["fds"], json!(["seccompFd"]));
    assert_eq!(state["metadata"], "test-metadata");
    assert_eq!(state["state"]["id"], id.as_str());
    assert!(
        out.contains("Invalid cross-device link"),
        "the listener's answer did not reach the process: {out}"
    );
}

#[test]
fn bad_profiles_are_refused_with_the_field() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.spec["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 9, "value": 1, "op": "SCMP_CMP_EQ"}]}]});
    b.save();
    let id = id("scbad");
    let o = rt.create_out(&b, &id, &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("linux.seccomp") && err.contains("index"),
        "{err}"
    );
    assert_clean(&rt, &id, Some(b.path()));
}
