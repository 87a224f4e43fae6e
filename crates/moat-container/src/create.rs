//! `create`: the runtime's side of starting a container. Validates the bundle before touching the
//! host, records state before each resource it creates (so that `delete --force` after a `kill -9`
//! of the runtime finds and frees everything), forks the init with `clone3`, answers its requests
//! (id maps, hooks) and returns once the init waits on the exec fifo.
//!
//! A failing create undoes what it did (the [`Undo`] guard): no state dir, cgroup or process stays.

use std::path::PathBuf;

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use crate::error::{ContainerError, Result};
use crate::init::InitArgs;
use crate::namespaces::NsPlan;
use crate::spec::{load_bundle, Bundle};
use crate::state::{StateFile, Store};
use crate::sync::{FromInit, ToInit};

/// Options of `create` (runc's flags).
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    pub id: String,
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
    pub preserve_fds: u32,
    pub systemd_cgroup: bool,
    /// A console socket the caller already holds (the runtime's end of a socketpair when it
    /// relays the terminal itself); used instead of `console_socket`.
    pub console: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
    /// Variables appended to `process.env` (`LISTEN_FDS`/`LISTEN_PID` of socket activation).
    pub extra_env: Vec<String>,
    /// runc's rootless mode: the cgroup is used where the user may write it and skipped
    /// elsewhere, unless a limit needs it (see [`moat_cgroups::rootless`]).
    pub rootless: bool,
}

/// A created container.
#[derive(Debug)]
pub struct Created {
    pub pid: i32,
    pub state: StateFile,
    /// Non-fatal findings (e.g. seccomp rules naming syscalls this architecture lacks).
    pub warnings: Vec<String>,
    /// Details for `--debug` (e.g. the cgroup directories a rootless container skipped).
    pub notes: Vec<String>,
}

/// Undo guard: on drop (unless disarmed) kills what was started and removes what was created.
struct Undo<'a> {
    store: &'a Store,
    id: String,
    pids: Vec<Pid>,
    cgroup: Option<moat_cgroups::Cgroup>,
    armed: bool,
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for pid in &self.pids {
            let _ = nix::sys::signal::kill(*pid, Signal::SIGKILL);
            let _ = waitpid(*pid, None);
        }
        if let Some(cg) = &self.cgroup {
            let _ = cg.destroy();
        }
        let _ = self.store.remove(&self.id);
    }
}

pub fn create(store: &Store, opts: &CreateOptions) -> Result<Created> {
    crate::state::validate_id(&opts.id)?;
    let mut bundle = load_bundle(&opts.bundle)?;
    if !opts.extra_env.is_empty() {
        if let Some(mut p) = bundle.spec.process().clone() {
            let mut env = p.env().clone().unwrap_or_default();
            env.extend(opts.extra_env.iter().cloned());
            p.set_env(Some(env));
            bundle.spec.set_process(Some(p));
        }
    }
    check_supported(&bundle)?;
    let linux = bundle.spec.linux().as_ref();
    let cg_path = linux
        .and_then(|l| l.cgroups_path().as_ref())
        .map(|p| p.to_string_lossy().into_owned());
    let cgroup = moat_cgroups::Cgroup::resolve(cg_path.as_deref(), &opts.id, opts.systemd_cgroup)?;
    let mut plan = NsPlan::from_spec(&bundle.spec);
    plan.runtime_in_userns = opts.rootless && NsPlan::running_in_userns();
    if opts.rootless && !plan.in_userns() && !nix::unistd::geteuid().is_root() {
        // runc's check: without privileges nothing else could be set up.
        return Err(ContainerError::InvalidConfig {
            field: "linux.namespaces".into(),
            message: "a rootless container needs a user namespace (`moat-runtime spec \
                      --rootless` writes one mapping your ids)"
                .into(),
        });
    }
    let seccomp = crate::seccomp::plan(&bundle.spec)?;
    let mut warnings = seccomp
        .as_ref()
        .map(|s| s.warnings.clone())
        .unwrap_or_default();
    // runc's checks of a cgroup that exists already: a frozen one would hang the init at its first
    // step, so it is refused at once; one that holds processes is used, with a warning.
    if cgroup.is_frozen().unwrap_or(false) {
        return Err(ContainerError::InvalidConfig {
            field: "linux.cgroupsPath".into(),
            message: format!(
                "the container's cgroup {} is frozen: thaw it or choose another cgroupsPath",
                cgroup
                    .dirs()
                    .first()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default()
            ),
        });
    }
    match cgroup.pids() {
        Ok(p) if !p.is_empty() => warnings.push(format!(
            "container's cgroup is not empty: {} process(es) found",
            p.len()
        )),
        _ => {}
    }

    let lock = store.create_dir(&opts.id)?;
    let mut undo = Undo {
        store,
        id: opts.id.clone(),
        pids: vec![],
        cgroup: None,
        armed: true,
    };
    let mut st = StateFile {
        id: opts.id.clone(),
        bundle: bundle.dir.clone(),
        rootfs: bundle.rootfs.clone(),
        pid: 0,
        pid_start: 0,
        created: crate::state::now_rfc3339(),
        annotations: bundle
            .spec
            .annotations()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        // Rootless: only what the user could create is recorded (below).
        cgroup: (!opts.rootless).then(|| cgroup.clone()),
        create_done: false,
        hooks: bundle.spec.hooks().clone(),
        // `list` shows root for an empty owner; a rootless container shows its user, as runc.
        owner: if opts.rootless {
            let uid = nix::unistd::geteuid();
            nix::unistd::User::from_uid(uid)
                .ok()
                .flatten()
                .map_or_else(|| format!("#{uid}"), |u| u.name)
        } else {
            String::new()
        },
        devices: None,
    };
    store.save(&st)?;
    let mut notes = Vec::new();
    let mut asked = Vec::new();
    let placed = if opts.rootless {
        let res = crate::resources::rootless(&bundle.spec);
        asked = moat_cgroups::rootless::limits_asked(&res)?;
        let (usable, n) = cgroup.create_rootless()?;
        notes.extend(n);
        undo.cgroup.clone_from(&usable);
        st.cgroup.clone_from(&usable);
        store.save(&st)?;
        moat_cgroups::rootless::check_limits(&cgroup, usable.as_ref(), &asked)?;
        if let (Some(u), false) = (&usable, asked.is_empty()) {
            u.apply(&res)?;
        }
        usable
    } else {
        cgroup.create()?;
        undo.cgroup = Some(cgroup.clone());
        let res = crate::resources::effective(&bundle.spec);
        if let Some(r) = &res {
            cgroup.apply(r)?;
        }
        // Kept for `update`, which adds its device rules to these (saved with create_done).
        st.devices = res.and_then(|r| r.devices().clone());
        Some(cgroup.clone())
    };

    let fifo = store.fifo(&opts.id);
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o622))
        .map_err(crate::error::sys(format!("mkfifo {}", fifo.display())))?;
    // mkfifo applies the umask.
    nix::sys::stat::fchmodat(
        None,
        &fifo,
        nix::sys::stat::Mode::from_bits_truncate(0o622),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
    .map_err(crate::error::sys(format!("chmod {}", fifo.display())))?;

    let fifo_fd = nix::fcntl::open(
        &fifo,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map(moat_sys::fd::owned)
    .map_err(crate::error::sys(format!(
        "open exec fifo {}",
        fifo.display()
    )))?;
    let console = crate::console::connect(opts.console.as_ref(), opts.console_socket.as_deref())?;
    let listener = crate::seccomp::connect_listener(seccomp.as_ref())?;
    let (parent, child) =
        crate::sync::pair().map_err(crate::error::sys("create sync socketpair"))?;

    let args = InitArgs {
        id: &opts.id,
        spec: &bundle.spec,
        bundle: &bundle.dir,
        rootfs: &bundle.rootfs,
        plan: &plan,
        fifo: Some(&fifo_fd),
        console: console.as_ref(),
        no_pivot: opts.no_pivot,
        no_new_keyring: opts.no_new_keyring,
        preserve_fds: opts.preserve_fds,
        cgroup: placed.as_ref(),
        exec: false,
        seccomp: seccomp.as_ref(),
        listener: listener.as_ref(),
    };
    let stage1 = match moat_sys::process::clone3(plan.clone_flags, false)
        .map_err(crate::error::sys("clone3 the container init"))?
    {
        moat_sys::process::Forked::Child => {
            drop(parent);
            lock.close_in_child();
            crate::init::run(&args, child)
        }
        moat_sys::process::Forked::Parent { pid, .. } => pid,
    };
    drop(child);
    drop(console);
    drop(listener);
    drop(fifo_fd);
    undo.pids.push(stage1);
    // No state write here: after a kill -9 of this process, `delete --force` finds the
    // processes through the cgroup recorded by the first write.
    st.pid = stage1.as_raw();
    // Moving a process into a v1 cgroup (or a v2 one without CLONE_INTO_CGROUP) can wait for an
    // RCU grace period (5-17 ms, `cgroup_threadgroup_rwsem`): let the init build its rootfs
    // meanwhile, unless it needs id maps first or forks again (the fork must follow the move).
    let early = !plan.new_userns() && !plan.second_fork;
    if early {
        parent
            .send(&ToInit::StartEarly)
            .map_err(crate::error::sys("write to container init"))?;
    }
    match &placed {
        Some(cg) if opts.rootless => {
            let (joined, n) = cg.join_rootless(stage1.as_raw())?;
            notes.extend(n);
            moat_cgroups::rootless::check_limits(&cgroup, joined.as_ref(), &asked)?;
            if joined.as_ref().map(|j| j.dirs()) != Some(cg.dirs()) {
                st.cgroup.clone_from(&joined);
                store.save(&st)?;
            }
        }
        Some(cg) => cg.add_pid(stage1.as_raw())?,
        None => {}
    }
    if plan.new_userns() && plan.clone_flags & libc::CLONE_NEWUSER as u64 != 0 {
        write_id_maps(&bundle, stage1.as_raw(), opts.rootless)?;
    }
    match parent.send(if early {
        &ToInit::Placed
    } else {
        &ToInit::Start
    }) {
        Ok(()) => {}
        // The init already failed (its report is queued) or died: the loop below says which.
        Err(nix::errno::Errno::EPIPE) if early => {}
        Err(e) => return Err(crate::error::sys("write to container init")(e)),
    }

    let mut init = stage1;
    loop {
        let msg = parent
            .recv::<FromInit>()
            .map_err(crate::error::sys("read from container init"))?;
        match msg {
            Some(FromInit::NeedListenerMessage) => {
                let mut state = store.oci_state(&st);
                state.status = crate::state::Status::Creating;
                state.pid = st.pid;
                let json = crate::seccomp::listener_message(seccomp.as_ref(), st.pid, &state);
                parent
                    .send(&ToInit::ListenerMessage { json })
                    .map_err(crate::error::sys("write to container init"))?;
            }
            Some(FromInit::NeedMaps { pid }) => {
                write_id_maps(&bundle, pid, opts.rootless)?;
                parent
                    .send(&ToInit::MapsWritten)
                    .map_err(crate::error::sys("write to container init"))?;
            }
            Some(FromInit::InitPid { pid }) => {
                init = Pid::from_raw(pid);
                undo.pids.push(init);
                // Stage 1 exits right after sending this.
                let _ = waitpid(stage1, None);
                undo.pids.retain(|p| *p != stage1);
                st.pid = pid;
            }
            Some(FromInit::RunHooks) => {
                let state = state_json(store, &st);
                let hooks = bundle.spec.hooks().as_ref();
                crate::hooks::run_all(
                    "prestart",
                    hooks.and_then(|h| h.prestart().as_ref()),
                    &state,
                )?;
                crate::hooks::run_all(
                    "createRuntime",
                    hooks.and_then(|h| h.create_runtime().as_ref()),
                    &state,
                )?;
                parent
                    .send(&ToInit::HooksDone { state })
                    .map_err(crate::error::sys("write to container init"))?;
            }
            Some(FromInit::Ready) => break,
            Some(FromInit::Failed(f)) => return Err(f.into()),
            None => {
                let how = match waitpid(init, None) {
                    Ok(WaitStatus::Exited(_, c)) => format!("exit status {c}"),
                    Ok(WaitStatus::Signaled(_, s, _)) => format!("killed by {s}"),
                    other => format!("{other:?}"),
                };
                return Err(ContainerError::InitDied(how));
            }
        }
    }
    st.pid = init.as_raw();
    st.pid_start = moat_sys::process::start_time(st.pid).unwrap_or(0);
    st.create_done = true;
    store.save(&st)?;
    if let Some(pf) = &opts.pid_file {
        write_pid_file(pf, st.pid)?;
    }
    undo.armed = false;
    Ok(Created {
        pid: st.pid,
        state: st,
        warnings,
        notes,
    })
}

fn state_json(store: &Store, st: &StateFile) -> String {
    let mut s = store.oci_state(st);
    s.status = crate::state::Status::Creating;
    s.pid = st.pid;
    serde_json::to_string(&s).unwrap_or_default()
}

/// Write `/proc/<pid>/{uid,gid}_map` from the spec. A rootless runtime without CAP_SETUID
/// (euid != 0) writes a map of its own id itself (after denying setgroups, which the kernel
/// requires for the gid map) and has newuidmap/newgidmap (setuid helpers reading /etc/subuid and
/// /etc/subgid) write any other map, as runc does.
fn write_id_maps(bundle: &Bundle, pid: i32, rootless: bool) -> Result<()> {
    let linux = bundle.spec.linux().as_ref();
    let unprivileged = rootless && !nix::unistd::geteuid().is_root();
    for (file, helper, own, maps) in [
        (
            "uid_map",
            "newuidmap",
            nix::unistd::geteuid().as_raw(),
            linux.and_then(|l| l.uid_mappings().clone()),
        ),
        (
            "gid_map",
            "newgidmap",
            nix::unistd::getegid().as_raw(),
            linux.and_then(|l| l.gid_mappings().clone()),
        ),
    ] {
        let maps = maps.unwrap_or_default();
        let path = PathBuf::from(format!("/proc/{pid}/{file}"));
        let only_own = maps.len() == 1 && maps[0].host_id() == own && maps[0].size() == 1;
        if unprivileged && !only_own {
            crate::idmap::run_helper(helper, pid, &maps)?;
            continue;
        }
        if unprivileged && file == "gid_map" {
            let sg = PathBuf::from(format!("/proc/{pid}/setgroups"));
            std::fs::write(&sg, "deny").map_err(crate::error::io("deny setgroups", sg))?;
        }
        let text: String = maps
            .iter()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect();
        std::fs::write(&path, text).map_err(crate::error::io("write user namespace map", path))?;
    }
    Ok(())
}

/// Write the pid file atomically (temp file + rename), as containerd and conmon expect.
pub fn write_pid_file(path: &std::path::Path, pid: i32) -> Result<()> {
    // Written beside it as `.NAME` then renamed, as runc does (its error names the same path).
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}"));
    // Never through a link planted at the temporary name (create_new is O_EXCL: a link, even
    // a dangling one, is an error, never followed); a stale one of ours is removed first.
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(crate::error::io("write pid file", &tmp))?;
    std::io::Write::write_all(&mut f, pid.to_string().as_bytes())
        .map_err(crate::error::io("write pid file", &tmp))?;
    std::fs::rename(&tmp, path).map_err(crate::error::io("write pid file", path))
}

/// Refuse what this backend does not implement yet instead of silently ignoring it.
fn check_supported(b: &Bundle) -> Result<()> {
    let linux = b.spec.linux().as_ref();
    if let Some(p) = b.spec.process() {
        crate::lsm::check(p).map_err(ContainerError::Unsupported)?;
    }
    for (i, m) in b.spec.mounts().iter().flatten().enumerate() {
        if m.uid_mappings().as_ref().is_some_and(|v| !v.is_empty())
            || m.gid_mappings().as_ref().is_some_and(|v| !v.is_empty())
        {
            return Err(ContainerError::Unsupported(format!(
                "mounts[{i}] ({}): idmapped mounts (uidMappings/gidMappings) are not supported; \
                 chown the source or use the container's user namespace instead",
                m.destination().display()
            )));
        }
    }
    if linux
        .and_then(|l| l.net_devices().as_ref())
        .is_some_and(|d| !d.is_empty())
    {
        return Err(ContainerError::Unsupported(
            "linux.netDevices: moving host network devices into the container is not supported"
                .into(),
        ));
    }
    if linux.and_then(|l| l.intel_rdt().as_ref()).is_some() {
        return Err(ContainerError::Unsupported(
            "linux.intelRdt: Intel RDT is not supported".into(),
        ));
    }
    Ok(())
}
