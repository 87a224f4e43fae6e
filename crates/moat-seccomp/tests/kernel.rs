//! Real-kernel tests: install compiled filters with `seccomp(2)` in a forked child and check
//! what the child sees. This is test-only code; production installs go through `moat-sys`.

use moat_seccomp::{compile, default_profile, program_bytes, Arch, Compiled};

fn build(json: &str) -> Compiled {
    let arch = Arch::native().expect("supported architecture");
    compile(&serde_json::from_str(json).unwrap(), arch).unwrap()
}

/// Install `prog` (raw bytes from `program_bytes`) in the calling thread. Only raw syscalls:
/// safe to call between `fork` and `_exit` in a multi-threaded test process.
fn install(prog: &[u8], flags: u32) -> libc::c_long {
    let fprog = libc::sock_fprog {
        len: (prog.len() / 8) as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return -1;
    }
    // SAFETY: `fprog` points to `prog`, which outlives the call; the kernel copies the program
    // and does not care about the alignment of the byte buffer.
    unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &fprog as *const libc::sock_fprog,
        )
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Run `body` in a forked child after installing `c`; returns the raw wait status.
fn in_child(c: &Compiled, body: fn() -> i32) -> i32 {
    let bytes = program_bytes(&c.program);
    // SAFETY: the child only makes raw syscalls (no allocation, no locks) and ends in `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = if install(&bytes, c.flags) < 0 {
            100
        } else {
            body()
        };
        // SAFETY: terminating the forked child without running the parent's atexit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child with a valid status pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid);
    status
}

fn exit_code(status: i32) -> Option<i32> {
    libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status))
}

#[test]
fn errno_action_is_seen_by_the_process() {
    let c = build(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
        {"names":["getcwd","uname"],"action":"SCMP_ACT_ERRNO","errnoRet":95}]}"#,
    );
    let status = in_child(&c, || {
        let mut buf = [0u8; 256];
        // SAFETY: getcwd into a local buffer of the given length.
        let r = unsafe { libc::syscall(libc::SYS_getcwd, buf.as_mut_ptr(), buf.len()) };
        if r != -1 || errno() != 95 {
            return 1;
        }
        // SAFETY: uname into a zeroed local struct.
        let r = unsafe { libc::uname(&mut std::mem::zeroed()) };
        if r != -1 || errno() != 95 {
            return 2;
        }
        // SAFETY: getpid has no arguments; it is allowed by default.
        if unsafe { libc::syscall(libc::SYS_getpid) } <= 0 {
            return 3;
        }
        0
    });
    assert_eq!(exit_code(status), Some(0), "status {status:#x}");
}

#[test]
fn kill_process_action_kills_with_sigsys() {
    let c = build(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
        {"names":["getpid"],"action":"SCMP_ACT_KILL_PROCESS"}]}"#,
    );
    let status = in_child(&c, || {
        // SAFETY: getpid has no arguments.
        unsafe { libc::syscall(libc::SYS_getpid) };
        0
    });
    assert!(libc::WIFSIGNALED(status), "status {status:#x}");
    assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
}

#[test]
fn argument_conditions_in_the_kernel() {
    // personality(READ_IMPLIES_EXEC) fails with EACCES, the query passes; dup(fd) with the
    // high half of the argument set fails with EINVAL (the low half alone would pass).
    let c = build(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
        {"names":["personality"],"action":"SCMP_ACT_ERRNO","errnoRet":13,
         "args":[{"index":0,"value":4194304,"op":"SCMP_CMP_EQ"}]},
        {"names":["dup"],"action":"SCMP_ACT_ERRNO","errnoRet":22,
         "args":[{"index":0,"value":4294967296,"op":"SCMP_CMP_GE"}]}]}"#,
    );
    let status = in_child(&c, || {
        // SAFETY: personality with integer arguments.
        let q = unsafe { libc::syscall(libc::SYS_personality, 0xffff_ffffu64) };
        if q < 0 {
            return 1;
        }
        // SAFETY: as above; 0x0040_0000 is READ_IMPLIES_EXEC, denied by the filter.
        if unsafe { libc::syscall(libc::SYS_personality, 0x0040_0000u64) } != -1 || errno() != 13 {
            return 2;
        }
        // SAFETY: dup of an fd number with the high half set: the filter answers first.
        if unsafe { libc::syscall(libc::SYS_dup, 0x1_0000_0000u64) } != -1 || errno() != 22 {
            return 3;
        }
        // SAFETY: dup(0) passes the filter; close the duplicate.
        let fd = unsafe { libc::syscall(libc::SYS_dup, 0u64) };
        if fd < 0 {
            return 4;
        }
        // SAFETY: closing the fd just created.
        unsafe { libc::close(fd as i32) };
        0
    });
    assert_eq!(exit_code(status), Some(0), "status {status:#x}");
}

#[test]
fn default_profile_in_the_kernel() {
    let arch = Arch::native().expect("supported architecture");
    let c = compile(&default_profile(), arch).unwrap();
    let status = in_child(&c, || {
        // SAFETY: write of a zero-length local buffer to stdout is allowed.
        if unsafe { libc::write(1, [0u8; 1].as_ptr().cast(), 0) } < 0 {
            return 1;
        }
        // SAFETY: unshare with a flag argument; the filter denies it.
        if unsafe { libc::unshare(libc::CLONE_NEWUSER) } != -1 || errno() != libc::EPERM {
            return 2;
        }
        // SAFETY: clone3 with a null argument; the filter answers ENOSYS first.
        let r = unsafe { libc::syscall(libc::SYS_clone3, 0usize, 0usize) };
        if r != -1 || errno() != libc::ENOSYS {
            return 3;
        }
        // SAFETY: keyctl with integer arguments; the filter denies it.
        if unsafe { libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0) } != -1 || errno() != libc::EPERM
        {
            return 4;
        }
        // SAFETY: socket(AF_VSOCK) is denied by an argument rule.
        if unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0) } != -1
            || errno() != libc::EPERM
        {
            return 5;
        }
        0
    });
    assert_eq!(exit_code(status), Some(0), "status {status:#x}");
}

#[test]
fn notify_returns_a_listener_fd() {
    let c = build(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
        {"names":["getppid"],"action":"SCMP_ACT_NOTIFY"}]}"#,
    );
    assert!(c.needs_notify_listener);
    let status = in_child(&c, || 0);
    // The child's install returned a listener fd (>= 0) rather than failing (exit 100).
    assert_eq!(exit_code(status), Some(0), "status {status:#x}");
}
