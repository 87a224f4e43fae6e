//! Process creation and process-wide attributes that `nix` does not wrap: `clone3` (with
//! `CLONE_PIDFD`, `CLONE_PARENT` and namespace flags), `pidfd_open`, `pidfd_send_signal`, the session
//! keyring, `close_range` and the start time of a pid (to tell a live process from a reused pid).

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::unistd::Pid;

use crate::Result;

/// What `clone3` returned in the calling process.
#[derive(Debug)]
pub enum Forked {
    /// We are the parent; the child has this pid and, when asked for, a pidfd.
    Parent { pid: Pid, pidfd: Option<OwnedFd> },
    /// We are the child.
    Child,
}

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Number of threads of the calling process, read from `/proc/thread-self/../stat`-equivalent
/// `/proc/self/stat` (field 20).
pub fn thread_count() -> Result<u64> {
    // num_threads is field 20.
    with_stat_fields("/proc/self/stat", |f| f.get(20 - 3)?.parse().ok()).ok_or(Errno::EINVAL)
}

/// Set in a child created by [`clone3`]: it is single-threaded by construction.
static IN_FORKED_CHILD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `clone3(2)` without a new stack: fork-like, with `flags` (namespace flags, `CLONE_PARENT`, ...)
/// and the child's exit signal SIGCHLD. With `want_pidfd` the parent also gets a pidfd.
///
/// Refuses (EBUSY) when the calling process has more than one thread, because a child forked from a
/// multi-threaded process may only call async-signal-safe functions; moat's create path is
/// single-threaded, which is what makes it sound for the child to allocate afterwards.
pub fn clone3(flags: u64, want_pidfd: bool) -> Result<Forked> {
    // A child made by this function starts with one thread, and the runtime's child code never
    // starts another; its /proc may already be a container's, where /proc/self is absent.
    if !IN_FORKED_CHILD.load(std::sync::atomic::Ordering::Relaxed) && thread_count()? != 1 {
        return Err(Errno::EBUSY);
    }
    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: flags
            | if want_pidfd {
                libc::CLONE_PIDFD as u64
            } else {
                0
            },
        exit_signal: if flags & libc::CLONE_PARENT as u64 != 0 {
            0
        } else {
            libc::SIGCHLD as u64
        },
        ..Default::default()
    };
    if want_pidfd {
        args.pidfd = &mut pidfd as *mut libc::c_int as u64;
    }
    // SAFETY: `args` is a valid, initialised clone_args of the size we pass; no stack is given,
    // so the child continues on a copy of our stack like fork(2). The process is single-threaded
    // (checked above), so the child may run arbitrary Rust code: no lock can be held by another
    // thread at the time of the copy.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match ret {
        -1 => Err(Errno::last()),
        0 => {
            IN_FORKED_CHILD.store(true, std::sync::atomic::Ordering::Relaxed);
            Ok(Forked::Child)
        }
        pid => Ok(Forked::Parent {
            pid: Pid::from_raw(pid as i32),
            // SAFETY: with CLONE_PIDFD the kernel stored a new, owned descriptor in `pidfd`.
            pidfd: want_pidfd.then(|| unsafe { OwnedFd::from_raw_fd(pidfd) }),
        }),
    }
}

/// Make the child `cmd` spawns the leader of a new session (`setsid(2)` between fork and exec),
/// so that no signal of the caller's terminal reaches it, even before its own code runs.
pub fn new_session_on_spawn(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls setsid(2), which
    // is async-signal-safe; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// `pidfd_open(2)`.
pub fn pidfd_open(pid: Pid) -> Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel returned a new descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `process_madvise(2)` with `MADV_PAGEOUT`: ask the kernel to reclaim the pages of `ranges`
/// (start address and length, in the address space of the process `pidfd` refers to). Only
/// pages that process alone maps are reclaimed; clean file pages are dropped (they come back
/// from the file when touched), anonymous ones only go to swap. Returns the bytes advised.
/// Needs `PTRACE_MODE_READ` on the process and CAP_SYS_NICE (Linux 5.10).
pub fn process_madvise_pageout(pidfd: BorrowedFd<'_>, ranges: &[(usize, usize)]) -> Result<usize> {
    let mut advised = 0;
    // At most IOV_MAX (1024) ranges per call.
    for chunk in ranges.chunks(1024) {
        let iov: Vec<libc::iovec> = chunk
            .iter()
            .map(|&(start, len)| libc::iovec {
                iov_base: start as *mut libc::c_void,
                iov_len: len,
            })
            .collect();
        // SAFETY: `iov` is a live array of `iov.len()` iovecs for the call; the kernel reads it
        // and treats the addresses in it as the *target's*, never touching ours through them.
        let r = unsafe {
            libc::syscall(
                libc::SYS_process_madvise,
                pidfd.as_raw_fd(),
                iov.as_ptr(),
                iov.len(),
                libc::MADV_PAGEOUT,
                0u32,
            )
        };
        if r < 0 {
            return Err(Errno::last());
        }
        advised += r as usize;
    }
    Ok(advised)
}

/// `pidfd_send_signal(2)`: signal the exact process the pidfd refers to (no pid-reuse race).
pub fn pidfd_send_signal(pidfd: &OwnedFd, sig: i32) -> Result<()> {
    // SAFETY: plain syscall; a null siginfo is allowed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// Join a new anonymous session keyring (what runc does unless `--no-new-keyring`), so the
/// container does not share the host session's keys.
pub fn join_new_session_keyring(name: &str) -> Result<()> {
    let name = std::ffi::CString::new(name).map_err(|_| Errno::EINVAL)?;
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    let r = unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, name.as_ptr()) };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// Set SIGCHLD to SIG_IGN, so that the kernel reaps this process's children itself: for the init
/// of a pid namespace that only holds it (orphans of the namespace become its children).
pub fn reap_children_automatically() -> Result<()> {
    // SAFETY: SIG_IGN is not a handler: no code of ours runs in signal context.
    let r = unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    if r == libc::SIG_ERR {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// Close every descriptor from `first` upwards (`close_range(2)`): for a forked child that never
/// execs and must not keep its parent's pipes and ports open.
pub fn close_from(first: i32) -> Result<()> {
    // SAFETY: plain syscall with integer arguments; the caller owns every descriptor it closes
    // (a freshly forked, single-threaded child).
    let r = unsafe { libc::syscall(libc::SYS_close_range, first as libc::c_uint, u32::MAX, 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(Errno::last())
    }
}

/// Mark every descriptor from `first` upwards close-on-exec (`close_range(CLOSE_RANGE_CLOEXEC)`),
/// falling back to walking `/proc/self/fd` on kernels without it.
pub fn cloexec_from(first: i32) -> Result<()> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: plain syscall with integer arguments; it only changes descriptor flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            u32::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let dir = std::fs::read_dir("/proc/self/fd").map_err(|e| io_errno(&e))?;
    let fds: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd >= first)
        .collect();
    for fd in fds {
        // Descriptors that are already closed (the directory's own) give EBADF: ignore.
        let _ = nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
    }
    Ok(())
}

/// `read` given the fields of a `stat` file (`/proc/PID/stat`) from field 3 (state) on, what
/// follows the command name: `fields[n - 3]` is field `n` of proc(5).
fn with_stat_fields<T>(path: &str, read: impl FnOnce(&[&str]) -> Option<T>) -> Option<T> {
    let stat = std::fs::read_to_string(path).ok()?;
    let after = stat.rsplit_once(')')?.1;
    read(&after.split_whitespace().collect::<Vec<_>>())
}

/// Start time of `pid` in clock ticks since boot (field 22 of /proc/PID/stat), or None when the
/// process does not exist or is a zombie.
pub fn start_time(pid: i32) -> Option<u64> {
    with_stat_fields(&format!("/proc/{pid}/stat"), |f| {
        if matches!(*f.first()?, "Z" | "X") {
            return None;
        }
        f.get(22 - 3)?.parse().ok()
    })
}

/// User and system CPU time of process `pid`, all its threads, in clock ticks (fields 14 and 15
/// of /proc/PID/stat).
pub fn cpu_time(pid: i32) -> Option<u64> {
    with_stat_fields(&format!("/proc/{pid}/stat"), |f| {
        Some(f.get(14 - 3)?.parse::<u64>().ok()? + f.get(15 - 3)?.parse::<u64>().ok()?)
    })
}

/// Convert an `std::io::Error` into an errno, EIO when it carries none.
pub fn io_errno(e: &std::io::Error) -> Errno {
    e.raw_os_error().map(Errno::from_raw).unwrap_or(Errno::EIO)
}

/// `setrlimit(2)` for one resource.
pub fn setrlimit(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> Result<()> {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `lim` is a valid rlimit that outlives the call.
    if unsafe { libc::setrlimit(resource, &lim) } == 0 {
        Ok(())
    } else {
        Err(Errno::last())
    }
}

/// `_exit(2)`: leave at once, without running the parent's atexit handlers or flushing stdio
/// buffers that a forked child inherited.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and has no preconditions.
    unsafe { libc::_exit(code) }
}

/// `setdomainname(2)`.
pub fn setdomainname(name: &str) -> Result<()> {
    // SAFETY: the pointer and length describe `name`, valid for the call.
    let r = unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) };
    if r == 0 {
        Ok(())
    } else {
        Err(Errno::last())
    }
}

/// An `execve` whose argument arrays are built in advance, so that [`PreparedExec::exec`] makes
/// exactly one system call and allocates nothing: the container init calls it right after
/// installing the seccomp filter, whose rules must see no syscall of the runtime's own.
pub struct PreparedExec {
    exe: std::ffi::CString,
    _argv: Vec<std::ffi::CString>,
    _env: Vec<std::ffi::CString>,
    argv_p: Vec<*const libc::c_char>,
    env_p: Vec<*const libc::c_char>,
}

impl PreparedExec {
    pub fn new(
        exe: std::ffi::CString,
        argv: Vec<std::ffi::CString>,
        env: Vec<std::ffi::CString>,
    ) -> PreparedExec {
        let ptrs = |v: &[std::ffi::CString]| {
            v.iter()
                .map(|s| s.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect::<Vec<_>>()
        };
        // The pointers point into the CStrings' heap buffers, which do not move when the
        // CStrings themselves are moved into the struct below.
        let (argv_p, env_p) = (ptrs(&argv), ptrs(&env));
        PreparedExec {
            exe,
            _argv: argv,
            _env: env,
            argv_p,
            env_p,
        }
    }

    pub fn exe(&self) -> &std::ffi::CStr {
        &self.exe
    }

    /// `execve`; returns only on failure, with its errno (read without any other syscall).
    pub fn exec(&self) -> Errno {
        // SAFETY: `exe` is NUL-terminated; `argv_p` and `env_p` are NULL-terminated arrays of
        // pointers to NUL-terminated strings owned by `self`, alive for the call.
        unsafe { libc::execve(self.exe.as_ptr(), self.argv_p.as_ptr(), self.env_p.as_ptr()) };
        Errno::last()
    }
}

/// Give the heap's free memory back to the kernel (glibc's `malloc_trim(0)`): for a long-lived
/// process (a container's monitor) after the set-up that made its heap grow.
pub fn release_free_heap() {
    // SAFETY: malloc_trim only walks and trims glibc's own arenas; no pointer is passed.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_of_this_process() {
        let me = std::process::id() as i32;
        let started = start_time(me).unwrap();
        assert!(started > 0);
        assert_eq!(start_time(me), Some(started));
        // Burn some CPU: the count is in clock ticks (10 ms).
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < std::time::Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(cpu_time(me).unwrap() > 0);
        assert!(thread_count().unwrap() >= 1);
        // No such process (pid_max is at most 2^22).
        assert_eq!(start_time(1 << 23), None);
        assert_eq!(cpu_time(1 << 23), None);
    }
}
