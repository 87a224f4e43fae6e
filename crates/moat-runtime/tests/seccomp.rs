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

/// Accept the runtime's connection to a seccomp `listenerPath` (failing after 20 s instead of
/// hanging) and receive the notify descriptor with the state it is sent with.
fn accept_listener(
    listener: &std::os::unix::net::UnixListener,
) -> (serde_json::Value, std::os::fd::OwnedFd) {
    listener.set_nonblocking(true).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let conn = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Err(e) => panic!("no connection from the runtime to listenerPath: {e}"),
        }
    };
    conn.set_nonblocking(false).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let (n, mut fds) = moat_sys::fd::recv_fds(std::os::fd::AsFd::as_fd(&conn), &mut buf).unwrap();
    let state = serde_json::from_slice(&buf[..n]).unwrap();
    (state, fds.pop().expect("no descriptor received"))
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
        let (state, fd) = accept_listener(&listener);
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

/// What the static busybox needs to run `true` (strace'd), and nothing else.
const BUSYBOX_TRUE: &[&str] = &[
    "execve",
    "arch_prctl",
    "brk",
    "getrandom",
    "getuid",
    "mprotect",
    "prctl",
    "prlimit64",
    "readlink",
    "rseq",
    "set_robust_list",
    "set_tid_address",
    "exit_group",
];

/// A strict allow-list (everything else fails with EPERM) that lists only what the container's
/// program needs: the runtime's own calls must all come before the filter, with and without
/// no_new_privs (without it, the init keeps CAP_SYS_ADMIN until execve to install it last).
#[test]
fn a_strict_allow_list_profile_sees_only_the_programs_syscalls() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["/bin/busybox", "true"]);
    b.spec["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": BUSYBOX_TRUE, "action": "SCMP_ACT_ALLOW"}]
    });
    for nnp in [true, false] {
        b.spec["process"]["noNewPrivileges"] = json!(nnp);
        b.save();
        let id = id("scstrict");
        let o = support::run_deadline(
            rt.cmd().args(["run", "--bundle"]).arg(b.path()).arg(&id),
            std::time::Duration::from_secs(20),
            "run with a strict profile",
        );
        assert!(
            o.status.success(),
            "noNewPrivileges {nnp}: {}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        assert_clean(&rt, &id, Some(b.path()));
    }
    // The filter is real: the same profile stops a program that needs more (ls: openat, getdents).
    b.spec["process"]["args"] = json!(["/bin/busybox", "ls", "/"]);
    b.save();
    let (code, _, _) = rt.run(&b, &id("scstrict"));
    assert_ne!(code, 0, "sh ran under a profile that does not allow it");
}

/// SCMP_ACT_NOTIFY on syscalls the runtime's init makes (getcwd, openat, close_range, capset...):
/// the listener must see none of them (before, create hung on a notification nobody answered),
/// and gets the descriptor with the state; the program's own notified syscalls (busybox `pwd`:
/// getcwd, and its write, ioctl, newfstatat) do reach it.
#[test]
fn notify_rules_never_see_the_inits_own_syscalls() {
    use std::os::fd::AsRawFd;
    let rt = Rt::new();
    let d = tempfile::tempdir().unwrap();
    let sock = d.path().join("listener.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let mut b = Bundle::new(&["/bin/busybox", "pwd"]);
    let init_calls = [
        "getcwd",
        "openat",
        "open",
        "close",
        "close_range",
        "fchdir",
        "chdir",
        "umask",
        "capset",
        "capget",
        "setgroups",
        "setresuid",
        "setresgid",
        "fcntl",
        "sendmsg",
        "sendto",
        "write",
        "read",
        "recvmsg",
        "newfstatat",
        "statx",
        "access",
        "faccessat",
        "faccessat2",
        "ioctl",
        "dup2",
        "dup3",
        "mmap",
        "munmap",
        "futex",
        "sched_yield",
        "rt_sigprocmask",
        "clone",
        "clone3",
        "wait4",
        "setsid",
    ];
    b.spec["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "listenerPath": sock,
        "syscalls": [{"names": init_calls.to_vec(), "action": "SCMP_ACT_NOTIFY"}]
    });
    b.spec["process"]["noNewPrivileges"] = json!(false);
    b.save();
    let id = id("scnotinit");
    let handler = std::thread::spawn(move || {
        let (state, fd) = accept_listener(&listener);
        // Answer every notification with "continue" and count them until all users are gone.
        let mut seen = vec![];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            let mut pfd = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the call.
            let r = unsafe { libc::poll(&mut pfd, 1, 100) };
            if r <= 0 {
                continue;
            }
            if pfd.revents & libc::POLLIN == 0 {
                break; // POLLHUP: no process uses the filter any more
            }
            let mut notif = [0u8; 80];
            // SAFETY: SECCOMP_IOCTL_NOTIF_RECV fills a seccomp_notif of 80 bytes.
            if unsafe { libc::ioctl(fd.as_raw_fd(), 0xc050_2100u64 as _, notif.as_mut_ptr()) } != 0
            {
                continue;
            }
            seen.push(i32::from_ne_bytes(notif[16..20].try_into().unwrap()));
            let mut resp = [0u8; 24];
            resp[..8].copy_from_slice(&notif[..8]);
            // SECCOMP_USER_NOTIF_FLAG_CONTINUE
            resp[20..24].copy_from_slice(&1u32.to_ne_bytes());
            // SAFETY: SECCOMP_IOCTL_NOTIF_SEND reads a seccomp_notif_resp of 24 bytes.
            unsafe { libc::ioctl(fd.as_raw_fd(), 0xc018_2101u64 as _, resp.as_ptr()) };
        }
        (state, seen)
    });
    let o = support::run_deadline(
        rt.cmd().args(["run", "--bundle"]).arg(b.path()).arg(&id),
        std::time::Duration::from_secs(20),
        "run with notify rules on the init's syscalls",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "/\n");
    let (state, seen) = handler.join().unwrap();
    assert_eq!(state["state"]["id"], id.as_str());
    assert!(state["pid"].as_i64().unwrap_or(0) > 0, "{state}");
    // Only busybox pwd's own calls: getcwd, write, ioctl, newfstatat (x86_64 numbers).
    let program = [
        libc::SYS_getcwd,
        libc::SYS_write,
        libc::SYS_ioctl,
        libc::SYS_newfstatat,
    ];
    assert!(seen.contains(&(libc::SYS_getcwd as i32)), "{seen:?}");
    assert!(
        seen.iter().all(|n| program.contains(&(*n as i64))),
        "the listener saw syscalls of the runtime: {seen:?}"
    );
    assert_clean(&rt, &id, Some(b.path()));
}

/// Many profiles written for runc (and older default ones) do not list openat2: the runtime
/// resolves paths with it, but only before the filter, so such a profile runs containers.
#[test]
fn a_profile_without_openat2_runs_containers() {
    let rt = Rt::new();
    let mut b = Bundle::new(&[
        "sh",
        "-c",
        "cat /etc/passwd > /dev/null && cd /tmp && echo ok",
    ]);
    let sc = &mut b.spec["linux"]["seccomp"];
    assert!(
        sc["defaultAction"]
            .as_str()
            .unwrap_or_default()
            .contains("ERRNO"),
        "{sc}"
    );
    let mut removed = 0;
    for rule in sc["syscalls"].as_array_mut().unwrap() {
        if let Some(names) = rule["names"].as_array_mut() {
            let before = names.len();
            names.retain(|n| n != "openat2");
            removed += before - names.len();
        }
    }
    assert!(removed > 0, "the default profile lists openat2");
    b.spec["process"]["cwd"] = json!("/root");
    b.save();
    assert_eq!(rt.run_ok(&b, &id("scnoopenat2")), "ok\n");
}

/// A notify listener with a real-time or deadline scheduler is refused at create (the descriptor
/// leaves through a helper thread that such a scheduler would starve or forbid), nothing left.
#[test]
fn notify_with_a_realtime_scheduler_is_refused() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.spec["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "listenerPath": "/nonexistent/listener.sock",
        "syscalls": [{"names": ["getcwd"], "action": "SCMP_ACT_NOTIFY"}]
    });
    b.spec["process"]["scheduler"] = json!({"policy": "SCHED_FIFO", "priority": 1});
    b.save();
    let id = id("scnotifyrt");
    let o = rt.create_out(&b, &id, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("linux.seccomp") && err.contains("SchedFifo"),
        "{err}"
    );
    assert_clean(&rt, &id, Some(b.path()));
}
