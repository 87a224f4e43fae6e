//! The container's seccomp filter: compiled by `moat-seccomp` in the runtime before anything is
//! created (so a bad profile fails `create` cleanly), installed by the init as the very last step
//! before `execve`, after which the init makes no other system call ([`install_last`]); without
//! no_new_privs the init keeps CAP_SYS_ADMIN until then (execve recomputes the sets). With
//! `SCMP_ACT_NOTIFY` rules, the listener descriptor goes to `listenerPath` over SCM_RIGHTS with
//! the container process state, as the OCI runtime spec describes, over a connection the runtime
//! made before forking.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;

use oci_spec::runtime::Spec;

use crate::error::{ContainerError, InitFailure, Result, Step};

/// A compiled filter ready to install.
#[derive(Debug, Clone)]
pub struct SeccompPlan {
    pub program: Vec<u8>,
    pub flags: u32,
    pub listener_path: Option<PathBuf>,
    pub listener_metadata: String,
    pub warnings: Vec<String>,
}

/// Compile the spec's `linux.seccomp`, if any.
pub fn plan(spec: &Spec) -> Result<Option<SeccompPlan>> {
    let Some(sc) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) else {
        return Ok(None);
    };
    let arch = moat_seccomp::Arch::native().ok_or_else(|| {
        ContainerError::Unsupported(
            "seccomp: this machine's architecture has no syscall table in moat".into(),
        )
    })?;
    let compiled = moat_seccomp::compile(sc, arch).map_err(|e| ContainerError::InvalidConfig {
        field: "linux.seccomp".into(),
        message: e.to_string(),
    })?;
    if compiled.needs_notify_listener {
        use oci_spec::runtime::LinuxSchedulerPolicy as P;
        let policy = spec
            .process()
            .as_ref()
            .and_then(|p| p.scheduler().as_ref())
            .map(|s| s.policy());
        // The notify descriptor leaves through a helper thread while the init waits without a
        // system call (see install_last): a real-time init would never let it run on one CPU,
        // and a SCHED_DEADLINE one cannot create it.
        if let Some(p @ (P::SchedFifo | P::SchedRr | P::SchedDeadline)) = policy {
            return Err(ContainerError::InvalidConfig {
                field: "linux.seccomp".into(),
                message: format!(
                    "SCMP_ACT_NOTIFY rules cannot be combined with process.scheduler {p:?} \
                     (the notify descriptor is handed over after the scheduler is applied)"
                ),
            });
        }
    }
    if compiled.needs_notify_listener && sc.listener_path().is_none() {
        return Err(ContainerError::InvalidConfig {
            field: "linux.seccomp.listenerPath".into(),
            message: "SCMP_ACT_NOTIFY rules need a listenerPath to send the notify descriptor to"
                .into(),
        });
    }
    Ok(Some(SeccompPlan {
        program: moat_seccomp::program_bytes(&compiled.program),
        flags: compiled.flags,
        listener_path: sc.listener_path().clone(),
        listener_metadata: sc.listener_metadata().clone().unwrap_or_default(),
        warnings: compiled.warnings,
    }))
}

impl SeccompPlan {
    /// Whether the filter hands a notify descriptor out (to `listenerPath`).
    pub fn has_listener(&self) -> bool {
        self.flags & moat_sys::seccomp::FILTER_FLAG_NEW_LISTENER != 0
    }
}

/// Runtime side, before the fork: connect to the plan's `listenerPath` when the filter has notify
/// rules (the init cannot reach the path from inside the container's root). A missing listener
/// fails here, before any process exists.
pub fn connect_listener(plan: Option<&SeccompPlan>) -> Result<Option<OwnedFd>> {
    let Some(path) = plan
        .filter(|p| p.has_listener())
        .and_then(|p| p.listener_path.as_ref())
    else {
        return Ok(None);
    };
    std::os::unix::net::UnixStream::connect(path)
        .map(|s| Some(OwnedFd::from(s)))
        .map_err(|source| ContainerError::Io {
            what: "connect to seccomp listener",
            path: path.clone(),
            source,
        })
}

/// Runtime side: the message that goes with the notify descriptor, the container process state
/// the OCI runtime spec defines, for process `pid`.
pub fn listener_message(
    plan: Option<&SeccompPlan>,
    pid: i32,
    state: &crate::state::OciState,
) -> String {
    serde_json::json!({
        "ociVersion": crate::state::OCI_VERSION,
        "fds": ["seccompFd"],
        "pid": pid,
        "metadata": plan.map(|p| p.listener_metadata.as_str()).unwrap_or_default(),
        "state": state,
    })
    .to_string()
}

/// Init side, the last step before `execve`: install the filter, and after it make no system call
/// at all, so that the filter's rules (a strict allow-list, an `SCMP_ACT_NOTIFY` on `openat` or
/// `getcwd`) never meet the runtime's own calls.
///
/// A notify listener must still reach `listenerPath`: a helper thread, started before the filter
/// (filters are per thread; TSYNC is dropped, there is no other thread to synchronise), sends the
/// descriptor over the connection the runtime made, while this thread waits on an atomic flag
/// without a syscall. `execve` then closes the descriptor (close-on-exec) and ends the helper.
pub fn install_last(
    plan: &SeccompPlan,
    listener: Option<(&OwnedFd, &str)>,
) -> std::result::Result<(), InitFailure> {
    use std::sync::atomic::{AtomicI32, Ordering};
    use std::sync::Arc;
    let flags = plan.flags & !moat_sys::seccomp::FILTER_FLAG_TSYNC;
    let install = |what| move |e| InitFailure::new(Step::Seccomp, what, e);
    if !plan.has_listener() {
        moat_sys::seccomp::set_mode_filter(&plan.program, flags)
            .map_err(install("install the seccomp filter"))?;
        return Ok(());
    }
    let (sock, msg) = listener.ok_or_else(|| {
        InitFailure::msg(Step::Seccomp, "no connection to the seccomp listenerPath")
    })?;
    const WAITING: i32 = -1;
    const ABANDONED: i32 = -2;
    const SENT: i32 = 1;
    const FAILED: i32 = 2;
    // (listener descriptor, outcome of the send)
    let shared = Arc::new((AtomicI32::new(WAITING), AtomicI32::new(0)));
    let sock = sock.try_clone().map_err(|e| {
        InitFailure::new(
            Step::Seccomp,
            "dup the listener connection",
            moat_sys::process::io_errno(&e),
        )
    })?;
    let (theirs, msg) = (shared.clone(), msg.to_owned());
    let helper = std::thread::Builder::new()
        .name("seccomp-listener".into())
        .spawn(move || {
            let fd = loop {
                match theirs.0.load(Ordering::Acquire) {
                    WAITING => std::thread::yield_now(),
                    ABANDONED => return,
                    fd => break fd,
                }
            };
            let r = moat_sys::fd::send_fds(sock.as_fd(), msg.as_bytes(), &[fd]);
            if let Err(e) = &r {
                eprintln!("error: container init: send the seccomp notify descriptor to the listener: {e}");
            }
            theirs.1.store(if r.is_ok() { SENT } else { FAILED }, Ordering::Release);
        })
        .map_err(|e| InitFailure::new(Step::Seccomp, "start the listener thread", moat_sys::process::io_errno(&e)))?;
    match moat_sys::seccomp::set_mode_filter(&plan.program, flags) {
        Ok(Some(fd)) => {
            shared.0.store(fd.as_raw_fd(), Ordering::Release);
            // Closed by execve (close-on-exec): closing it here would be a system call.
            std::mem::forget(fd);
        }
        Ok(None) => unreachable!("NEW_LISTENER returns a descriptor"),
        Err(e) => {
            shared.0.store(ABANDONED, Ordering::Release);
            return Err(install("install the seccomp filter")(e));
        }
    }
    // Bounded (a count, not a clock: reading the time may be a system call): seconds of
    // spinning, far beyond one sendmsg on a unix socket.
    let mut spins: u64 = 0;
    loop {
        match shared.1.load(Ordering::Acquire) {
            SENT => break,
            FAILED => {
                return Err(InitFailure::msg(
                    Step::Seccomp,
                    "send the seccomp notify descriptor to listenerPath",
                ))
            }
            _ if spins > 1 << 32 => {
                return Err(InitFailure::msg(
                    Step::Seccomp,
                    "the notify descriptor was not sent to listenerPath in time",
                ))
            }
            _ => {
                spins += 1;
                std::hint::spin_loop()
            }
        }
    }
    // Neither the thread handle nor the last reference may be dropped: freeing is not syscall-free.
    std::mem::forget(helper);
    std::mem::forget(shared);
    Ok(())
}
