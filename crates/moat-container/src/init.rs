//! The container's init, from the moment `clone3` returns in the child until `execve` of the
//! user's program. It runs in a forked copy of the runtime (no re-exec of a second binary): joins
//! and creates namespaces, forks once more only when a PID or time namespace demands it, builds the
//! rootfs, sets up the console and credentials, reports `Ready` to the runtime and then blocks on
//! the exec fifo until `start`.
//!
//! What it must never do: return into the runtime's code (every path ends in `execve` or `_exit`),
//! or leave a runtime descriptor open across `execve`.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::error::{InitFailure, Step};
use crate::namespaces::NsPlan;
use crate::rootfs::{self, RootfsPlan};
use crate::sync::{Channel, FromInit, ToInit};

type R<T> = std::result::Result<T, InitFailure>;

/// Everything the init needs, borrowed from the runtime's memory (the child has a copy of it).
pub struct InitArgs<'a> {
    pub id: &'a str,
    pub spec: &'a Spec,
    pub bundle: &'a Path,
    pub rootfs: &'a Path,
    pub plan: &'a NsPlan,
    /// `O_PATH` descriptor of the exec fifo (`create` only).
    pub fifo: Option<&'a OwnedFd>,
    pub console: Option<&'a OwnedFd>,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
    pub preserve_fds: u32,
    pub cgroup: Option<&'a moat_cgroups::Cgroup>,
    /// `exec` into a running container instead of creating one.
    pub exec: bool,
    /// The compiled seccomp filter, if the spec has one.
    pub seccomp: Option<&'a crate::seccomp::SeccompPlan>,
    /// A connection to the seccomp `listenerPath`, made by the runtime (the path is outside the
    /// container's root), when the filter has notify rules.
    pub listener: Option<&'a OwnedFd>,
}

/// Entry point in the child after clone3. Never returns.
pub fn run(args: &InitArgs<'_>, ch: Channel) -> ! {
    let placement = Placement {
        ch: &ch,
        pending: std::cell::Cell::new(false),
        cgroupns: std::cell::Cell::new(false),
    };
    let err = match stage1(args, &ch, &placement) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let _ = ch.send(&FromInit::Failed(err));
    // The runtime may still be moving us into the cgroup: exit only after that, so that the
    // move succeeds and the runtime reads the failure above instead of failing on a dead pid.
    if placement.pending.get() {
        let _ = ch.recv::<ToInit>();
    }
    // SAFETY-free exit: skip atexit handlers and buffered-IO flushing of the parent's copy.
    moat_sys::process::exit_now(1)
}

fn wait_for(ch: &Channel) -> R<ToInit> {
    match ch.recv::<ToInit>() {
        Ok(Some(m)) => Ok(m),
        // The runtime died or gave up: nothing to report to.
        Ok(None) => moat_sys::process::exit_now(1),
        Err(e) => Err(InitFailure::new(Step::Setup, "read from runtime", e)),
    }
}

/// Whether the init is in its cgroup yet. After [`ToInit::StartEarly`] the runtime moves it there
/// while the init already works; [`Placement::ensure`] waits for [`ToInit::Placed`] and then
/// unshares the cgroup namespace (it must be rooted in the container's cgroup). Everything that
/// depends on the cgroup calls it first: a cgroup mount, the end of the rootfs setup, a fork.
struct Placement<'a> {
    ch: &'a Channel,
    pending: std::cell::Cell<bool>,
    cgroupns: std::cell::Cell<bool>,
}

impl Placement<'_> {
    fn ensure(&self) -> R<()> {
        if !self.pending.get() {
            return Ok(());
        }
        if !matches!(wait_for(self.ch)?, ToInit::Placed) {
            return Err(InitFailure::msg(
                Step::Setup,
                "unexpected message from runtime",
            ));
        }
        self.pending.set(false);
        if self.cgroupns.get() {
            nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP)
                .map_err(|e| InitFailure::new(Step::Unshare, "unshare cgroup namespace", e))?;
        }
        Ok(())
    }
}

fn stage1(
    args: &InitArgs<'_>,
    ch: &Channel,
    placement: &Placement<'_>,
) -> R<std::convert::Infallible> {
    let setup = |what: &'static str| move |e| InitFailure::new(Step::Setup, what, e);
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(setup("set parent-death signal"))?;
    if let (true, Some(p)) = (args.exec, args.spec.process()) {
        crate::process::apply_exec_affinity(p, false)?;
    }
    let early = match wait_for(ch)? {
        ToInit::Start => false,
        ToInit::StartEarly => true,
        _ => {
            return Err(InitFailure::msg(
                Step::Setup,
                "unexpected message from runtime",
            ))
        }
    };
    let plan = args.plan;
    // Open every namespace to join before joining any: paths resolve in the runtime's namespaces.
    let mut joins = Vec::new();
    for (typ, path) in &plan.joins {
        let fd = nix::fcntl::open(
            path.as_path(),
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map(moat_sys::fd::owned)
        .map_err(|e| {
            InitFailure::new(
                Step::JoinNamespace,
                format!("open {:?} namespace {}", typ, path.display()),
                e,
            )
        })?;
        joins.push((*typ, path, fd));
    }
    // The user namespace first: it owns the others.
    joins.sort_by_key(|(t, _, _)| if *t == LinuxNamespaceType::User { 0 } else { 1 });
    for (typ, path, fd) in &joins {
        nix::sched::setns(fd, CloneFlags::from_bits_retain(NsPlan::flag(*typ) as i32)).map_err(
            |e| {
                InitFailure::new(
                    Step::JoinNamespace,
                    format!("join {:?} namespace {}", typ, path.display()),
                    e,
                )
            },
        )?;
    }
    drop(joins);
    let unshare = plan.unshare_flags;
    if unshare & libc::CLONE_NEWUSER as u64 != 0 {
        nix::sched::unshare(CloneFlags::CLONE_NEWUSER)
            .map_err(|e| InitFailure::new(Step::Unshare, "unshare user namespace", e))?;
    }
    if unshare & libc::CLONE_NEWUSER as u64 != 0 {
        // With clone3(CLONE_NEWUSER) the runtime wrote the maps before sending Start.
        ch.send(&FromInit::NeedMaps {
            pid: nix::unistd::getpid().as_raw(),
        })
        .map_err(setup("write to runtime"))?;
        if !matches!(wait_for(ch)?, ToInit::MapsWritten) {
            return Err(InitFailure::msg(
                Step::Setup,
                "unexpected message from runtime",
            ));
        }
    }
    if plan.new_userns()
        || plan
            .joins
            .iter()
            .any(|(t, _)| *t == LinuxNamespaceType::User)
    {
        // Become root of the user namespace (uid 0 must be mapped).
        let root = nix::unistd::Uid::from_raw(0);
        let rootg = nix::unistd::Gid::from_raw(0);
        nix::unistd::setresgid(rootg, rootg, rootg).map_err(|e| {
            InitFailure::new(
                Step::User,
                "setgid 0 in the user namespace (is gid 0 mapped?)",
                e,
            )
        })?;
        nix::unistd::setresuid(root, root, root).map_err(|e| {
            InitFailure::new(
                Step::User,
                "setuid 0 in the user namespace (is uid 0 mapped?)",
                e,
            )
        })?;
    }
    let rest = unshare & !(libc::CLONE_NEWUSER as u64);
    let cgroupns = libc::CLONE_NEWCGROUP as u64;
    placement.pending.set(early);
    placement.cgroupns.set(early && rest & cgroupns != 0);
    let now = if early { rest & !cgroupns } else { rest };
    if now != 0 {
        nix::sched::unshare(CloneFlags::from_bits_retain(now as i32)).map_err(|e| {
            InitFailure::new(
                Step::Unshare,
                format!("unshare namespaces {}", NsPlan::describe(now)),
                e,
            )
        })?;
    }
    if rest & libc::CLONE_NEWTIME as u64 != 0 {
        write_time_offsets(args.spec)?;
    }
    if plan.second_fork {
        placement.ensure()?;
        // The new process must not speak to the runtime before stage 1 has named it: a `Ready`
        // that overtook `InitPid` made the runtime wait for stage 1 (exit 0) instead of the
        // process (`exec` returned before the process wrote anything). It waits for the end of
        // this pipe, which stage 1 closes right after sending `InitPid`.
        let (gate_r, gate_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| InitFailure::new(Step::Fork, "create the fork gate", e))?;
        match moat_sys::process::clone3(libc::CLONE_PARENT as u64, false)
            .map_err(|e| InitFailure::new(Step::Fork, "fork the container init", e))?
        {
            moat_sys::process::Forked::Parent { pid, .. } => {
                let _ = ch.send(&FromInit::InitPid { pid: pid.as_raw() });
                // Released now, not at exit: exit tears the address space down before it
                // closes files.
                drop(gate_w);
                moat_sys::process::exit_now(0);
            }
            moat_sys::process::Forked::Child => {
                drop(gate_w);
                let mut byte = [0u8; 1];
                while let Err(Errno::EINTR) = nix::unistd::read(gate_r.as_raw_fd(), &mut byte) {}
                drop(gate_r);
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(setup("set parent-death signal"))?;
            }
        }
    }
    if args.exec {
        placement.ensure()?;
        exec_process(args, ch)
    } else {
        container_init(args, ch, placement)
    }
}

fn write_time_offsets(spec: &Spec) -> R<()> {
    let offsets = spec
        .linux()
        .as_ref()
        .and_then(|l| l.time_offsets().clone())
        .unwrap_or_default();
    let mut text = String::new();
    for (clock, off) in offsets {
        text.push_str(&format!(
            "{clock} {} {}\n",
            off.secs().unwrap_or(0),
            off.nanosecs().unwrap_or(0)
        ));
    }
    if text.is_empty() {
        return Ok(());
    }
    // After setresuid in a new user namespace the init is not dumpable, so its /proc files belong
    // to the host's root, which is unmapped here: become dumpable for the write only (runc's
    // nsexec does the same around its /proc writes).
    let undump = nix::sys::prctl::get_dumpable().map(|d| !d).unwrap_or(false);
    if undump {
        let _ = nix::sys::prctl::set_dumpable(true);
    }
    let r = std::fs::write("/proc/self/timens_offsets", text);
    if undump {
        let _ = nix::sys::prctl::set_dumpable(false);
    }
    r.map_err(|e| {
        InitFailure::new(
            Step::Setup,
            "write /proc/self/timens_offsets",
            moat_sys::process::io_errno(&e),
        )
    })
}

fn container_init(
    args: &InitArgs<'_>,
    ch: &Channel,
    placement: &Placement<'_>,
) -> R<std::convert::Infallible> {
    let spec = args.spec;
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| InitFailure::msg(Step::Setup, "process missing"))?;
    let linux = spec.linux().as_ref();
    nix::unistd::setsid().map_err(|e| InitFailure::new(Step::Setup, "setsid", e))?;
    if !args.no_new_keyring {
        match moat_sys::process::join_new_session_keyring(&format!("_ses.{}", args.id)) {
            Ok(()) | Err(Errno::ENOSYS) | Err(Errno::EPERM) | Err(Errno::EACCES)
            | Err(Errno::EDQUOT) => {}
            Err(e) => {
                return Err(InitFailure::new(
                    Step::Setup,
                    "join a new session keyring",
                    e,
                ))
            }
        }
    }
    crate::process::set_rlimits(process.rlimits().as_deref().unwrap_or_default())?;

    let plan = RootfsPlan {
        spec,
        bundle: args.bundle,
        rootfs: args.rootfs,
        in_userns: args.plan.in_userns(),
        new_cgroupns: args.plan.new_cgroupns(),
        cgroup: args.cgroup,
        placed: &|| placement.ensure(),
    };
    let root = rootfs::prepare(&plan)?;
    placement.ensure()?;
    // The state JSON is only for hooks; without any, no round trip to the runtime.
    let state = if crate::hooks::any_during_create(spec) {
        ch.send(&FromInit::RunHooks)
            .map_err(|e| InitFailure::new(Step::Setup, "write to runtime", e))?;
        match wait_for(ch)? {
            ToInit::HooksDone { state } => state,
            _ => {
                return Err(InitFailure::msg(
                    Step::Setup,
                    "unexpected message from runtime",
                ))
            }
        }
    } else {
        String::new()
    };
    let process_env = process.env().clone().unwrap_or_default();
    crate::hooks::run_all_in_container(
        "createContainer",
        spec.hooks()
            .as_ref()
            .and_then(|h| h.create_container().as_ref()),
        &state,
        &process_env,
    )
    .map_err(|e| InitFailure::msg(Step::Hook, e.to_string()))?;

    // The runtime opened it (O_PATH): a container root mapped to an unprivileged host uid could
    // not reach the runtime's state directory. Reopened for writing through /proc/self/fd.
    let fifo = args
        .fifo
        .ok_or_else(|| InitFailure::msg(Step::Setup, "no exec fifo"))?;
    match moat_sys::resolve::mkdir_all_in_root(
        root.as_fd(),
        process.cwd(),
        moat_sys::resolve::Leaf::Dir,
        0o755,
    ) {
        Ok(_) => {}
        // A directory on the way that root in the runtime may not search (mode 0700 of the
        // container's user, with no CAP_DAC_OVERRIDE over it: a user namespace not mapping its
        // owner, a root-squashed mount, a runtime without the capability): it exists, and the
        // process enters it as its own user (`prepare_process`), as runc 1.1 does.
        Err(nix::errno::Errno::EACCES | nix::errno::Errno::EPERM) => {}
        Err(e) => {
            return Err(InitFailure::new(
                Step::Cwd,
                format!("create working directory {}", process.cwd().display()),
                e,
            ))
        }
    }

    rootfs::switch_root(&root, args.no_pivot)?;
    drop(root);
    // Sysctls before the read-only and masked paths: /proc/sys is usually one of them (runc's order).
    for (k, v) in linux.and_then(|l| l.sysctl().clone()).unwrap_or_default() {
        write_sysctl(&k, &v)?;
    }
    rootfs::finish(spec)?;
    if let Some(h) = spec.hostname() {
        if !args.plan.has(LinuxNamespaceType::Uts) {
            return Err(InitFailure::msg(
                Step::Hostname,
                "hostname is set but the container has no UTS namespace of its own",
            ));
        }
        nix::unistd::sethostname(h)
            .map_err(|e| InitFailure::new(Step::Hostname, format!("sethostname {h}"), e))?;
    }
    if let Some(d) = spec.domainname() {
        if !args.plan.has(LinuxNamespaceType::Uts) {
            return Err(InitFailure::msg(
                Step::Hostname,
                "domainname is set but the container has no UTS namespace of its own",
            ));
        }
        moat_sys::process::setdomainname(d)
            .map_err(|e| InitFailure::new(Step::Hostname, format!("setdomainname {d}"), e))?;
    }
    if let Some(adj) = process.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string()).map_err(|e| {
            InitFailure::new(
                Step::Setup,
                format!("set oom_score_adj {adj} (lowering it needs CAP_SYS_RESOURCE)"),
                moat_sys::process::io_errno(&e),
            )
        })?;
    }
    let prepared = prepare_process(args, process, ch)?;

    nix::sys::prctl::set_pdeathsig(None)
        .map_err(|e| InitFailure::new(Step::Setup, "clear parent-death signal", e))?;
    ch.send(&FromInit::Ready)
        .map_err(|e| InitFailure::new(Step::Setup, "write to runtime", e))?;

    // From here on the runtime has returned; failures go to the container's stderr.
    // The write end stays open (close-on-exec) until execve: `start` reads until EOF, so it
    // returns only once the user's program runs (or the init died), after startContainer hooks.
    let _exec_fifo = wait_exec_fifo(fifo);
    if let Err(e) = crate::hooks::run_all_in_container(
        "startContainer",
        spec.hooks()
            .as_ref()
            .and_then(|h| h.start_container().as_ref()),
        &state,
        &process_env,
    ) {
        fatal(&e.to_string());
    }
    exec_prepared(process, &prepared, args)
}

/// The program to execute, resolved before `Ready` so that a missing binary fails `create`, and
/// what the seccomp notify listener is sent with, if the filter has one.
struct Prepared {
    exec: moat_sys::process::PreparedExec,
    listener_msg: Option<String>,
}

/// Console, capabilities, user and working directory of the process; then find its executable.
/// The seccomp filter is not installed here but by [`exec_prepared`], as the very last step; a
/// filter installed without no_new_privs needs CAP_SYS_ADMIN then, so it is kept in the effective
/// and permitted sets until `execve` recomputes them (it survives only where the spec's own
/// sets give it back).
fn prepare_process(
    args: &InitArgs<'_>,
    process: &oci_spec::runtime::Process,
    ch: &Channel,
) -> R<Prepared> {
    crate::sched::apply(args.spec)?;
    if process.terminal().unwrap_or(false) {
        let sock = args.console.ok_or_else(|| {
            InitFailure::msg(
                Step::Console,
                "process.terminal is true but no --console-socket was given",
            )
        })?;
        crate::console::setup(sock, process)?;
    }
    let nnp = process.no_new_privileges().unwrap_or(false);
    let caps = process.capabilities().as_ref();
    // runc 1.1's order: the working directory is entered before the switch to the process's
    // user (so a directory only the runtime's root may reach works), and once more after it when
    // root was refused (a directory only the process's user may reach).
    let denied_as_root = crate::process::enter_cwd_before_setuid(process.cwd())?;
    crate::process::apply_bounding(caps)?;
    crate::process::set_user(process)?;
    if let Some(first) = denied_as_root {
        crate::process::enter_cwd_after_setuid(process, first)?;
    }
    crate::process::apply_caps(caps, args.seccomp.is_some() && !nnp)?;
    let env = crate::process::exec_env(process);
    let env_strings: Vec<String> = env
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    let argv: Vec<std::ffi::CString> = process
        .args()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|a| {
            std::ffi::CString::new(a)
                .map_err(|_| InitFailure::msg(Step::Executable, "process.args contains a NUL byte"))
        })
        .collect::<R<_>>()?;
    let arg0 = argv
        .first()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default();
    let exe = crate::process::find_executable(&arg0, &env_strings)?;
    let exe = std::ffi::CString::new(exe.into_os_string().into_encoded_bytes())
        .map_err(|_| InitFailure::msg(Step::Executable, "path contains NUL"))?;
    let listener_msg = match args.seccomp {
        Some(sc) if sc.has_listener() => {
            ch.send(&FromInit::NeedListenerMessage)
                .map_err(|e| InitFailure::new(Step::Seccomp, "write to runtime", e))?;
            match wait_for(ch)? {
                ToInit::ListenerMessage { json } => Some(json),
                _ => {
                    return Err(InitFailure::msg(
                        Step::Setup,
                        "unexpected message from runtime",
                    ))
                }
            }
        }
        _ => None,
    };
    Ok(Prepared {
        exec: moat_sys::process::PreparedExec::new(exe, argv, env),
        listener_msg,
    })
}

/// The last steps before `execve`: umask, no_new_privs, closing every runtime descriptor, the LSM
/// label, and then the seccomp filter, after which the init makes no system call but `execve`
/// (so neither a strict profile nor an `SCMP_ACT_NOTIFY` rule ever sees the runtime's own calls).
fn exec_prepared(process: &oci_spec::runtime::Process, p: &Prepared, args: &InitArgs<'_>) -> ! {
    let preserve_fds = args.preserve_fds;
    if let Some(mask) = process.user().umask() {
        nix::sys::stat::umask(Mode::from_bits_truncate(mask));
    }
    if process.no_new_privileges().unwrap_or(false) {
        if let Err(e) = nix::sys::prctl::set_no_new_privs() {
            fatal(&format!("set no_new_privs: {e}"));
        }
    }
    if let Err(e) = moat_sys::process::cloexec_from(3 + preserve_fds as i32) {
        fatal(&format!("close runtime descriptors: {e}"));
    }
    for fd in 3..3 + preserve_fds as i32 {
        if let Ok(owned) = moat_sys::fd::own_inherited(fd) {
            let _ = moat_sys::fd::set_cloexec(owned.as_fd(), false);
            std::mem::forget(owned);
        }
    }
    if let Err(e) = crate::lsm::apply_at_exec(process) {
        fatal(&e.to_string());
    }
    if let Some(sc) = args.seccomp {
        let listener = args.listener.zip(p.listener_msg.as_deref());
        if let Err(e) = crate::seccomp::install_last(sc, listener) {
            fatal(&e.to_string());
        }
    }
    let e = p.exec.exec();
    fatal(&format!(
        "exec {}: {}",
        p.exec.exe().to_string_lossy(),
        e.desc()
    ));
}

/// `exec`: a new process in the namespaces of a running container (already joined by stage 1).
fn exec_process(args: &InitArgs<'_>, ch: &Channel) -> R<std::convert::Infallible> {
    let process = args
        .spec
        .process()
        .as_ref()
        .ok_or_else(|| InitFailure::msg(Step::Setup, "process missing"))?;
    if process.terminal().unwrap_or(false) {
        nix::unistd::setsid().map_err(|e| InitFailure::new(Step::Setup, "setsid", e))?;
    }
    crate::process::set_rlimits(process.rlimits().as_deref().unwrap_or_default())?;
    crate::process::apply_exec_affinity(process, true)?;
    let prepared = prepare_process(args, process, ch)?;
    nix::sys::prctl::set_pdeathsig(None)
        .map_err(|e| InitFailure::new(Step::Setup, "clear parent-death signal", e))?;
    ch.send(&FromInit::Ready)
        .map_err(|e| InitFailure::new(Step::Setup, "write to runtime", e))?;
    exec_prepared(process, &prepared, args)
}

fn fatal(msg: &str) -> ! {
    eprintln!("error: container init: {msg}");
    moat_sys::process::exit_now(127)
}

fn wait_exec_fifo(fifo: &OwnedFd) -> OwnedFd {
    let path = moat_sys::resolve::proc_fd_path(fifo.as_fd());
    match nix::fcntl::open(
        path.as_str(),
        nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => {
            let fd = moat_sys::fd::owned(fd);
            let _ = nix::unistd::write(&fd, b"0");
            fd
        }
        Err(e) => fatal(&format!("open exec fifo: {e}")),
    }
}

fn write_sysctl(key: &str, value: &str) -> R<()> {
    if key.is_empty() || key.contains("..") || key.starts_with('/') {
        return Err(InitFailure::msg(
            Step::Sysctl,
            format!("invalid sysctl name {key:?}"),
        ));
    }
    let rel = key.replace('.', "/");
    let slash = nix::fcntl::open(
        "/proc/sys",
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_DIRECTORY,
        Mode::empty(),
    )
    .map(moat_sys::fd::owned)
    .map_err(|e| InitFailure::new(Step::Sysctl, "open /proc/sys (is /proc mounted?)", e))?;
    let fd = moat_sys::resolve::open_in_root(
        slash.as_fd(),
        Path::new(&rel),
        libc::O_WRONLY | libc::O_TRUNC,
        0,
    )
    .map_err(|e| InitFailure::new(Step::Sysctl, format!("open /proc/sys/{rel}"), e))?;
    nix::unistd::write(&fd, value.as_bytes())
        .map_err(|e| InitFailure::new(Step::Sysctl, format!("set {key}={value}"), e))?;
    let _ = fd.as_raw_fd();
    Ok(())
}
