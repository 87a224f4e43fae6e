//! `exec`: start a new process inside a running container. It joins every namespace of the
//! container's init (through /proc/<init>/ns), its cgroup, and gets the container's security
//! settings (capabilities, rlimits, no_new_privs, user) from the container's config unless the
//! caller overrides them. The same child code as `create` does the joining (stage 1 of `init`).
//!
//! As runc 1.1: a `created` container accepts exec (its namespaces exist), a paused one only with
//! `ignore_paused` (the new process then joins the frozen cgroup and runs once resumed), and
//! `--cgroup [CTRL[,CTRL]:]PATH` places the process in an existing sub-cgroup of the container.
//! A pid file that cannot be written kills the new process: nothing is left behind.

use std::path::{Component, Path, PathBuf};

use nix::sys::signal::Signal;
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxNamespaceType, Process};

use crate::error::{ContainerError, Result};
use crate::init::InitArgs;
use crate::namespaces::NsPlan;
use crate::state::{Status, Store};
use crate::sync::{FromInit, ToInit};

/// Options of `exec` that are not part of the process.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    pub id: String,
    pub console_socket: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub preserve_fds: u32,
    /// A console socket the caller already holds (see `CreateOptions::console`).
    pub console: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
    /// Exec even when the container is paused.
    pub ignore_paused: bool,
    /// runc's `--cgroup`: `PATH` (every controller) or `CTRL[,CTRL]:PATH`, relative to the
    /// container's cgroup; the sub-cgroup must exist.
    pub cgroups: Vec<String>,
}

/// The container's own process definition, the base that `exec`'s flags override (as runc does).
pub fn base_process(store: &Store, id: &str) -> Result<Process> {
    let st = store.load(id)?;
    let bundle = crate::spec::load_bundle(&st.bundle)?;
    bundle
        .spec
        .process()
        .clone()
        .ok_or_else(|| ContainerError::InvalidConfig {
            field: "process".into(),
            message: "missing".into(),
        })
}

/// Start `process` in container `opts.id`; returns the pid of the new process (our child).
pub fn exec(store: &Store, opts: &ExecOptions, process: Process) -> Result<Pid> {
    let st = store.load(&opts.id)?;
    let status = store.status(&st);
    if status == Status::Paused && !opts.ignore_paused {
        return Err(ContainerError::ExecPaused(opts.id.clone()));
    }
    if !matches!(status, Status::Running | Status::Created | Status::Paused) {
        return Err(ContainerError::BadStatus {
            id: opts.id.clone(),
            action: "exec",
            status: status.to_string(),
        });
    }
    let bundle = crate::spec::load_bundle(&st.bundle)?;
    let mut spec = bundle.spec.clone();
    spec.set_process(Some(process));
    crate::spec::validate(&spec)?;
    if let Some(p) = spec.process() {
        crate::lsm::check(p).map_err(ContainerError::Unsupported)?;
    }
    let types: Vec<LinuxNamespaceType> = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default()
        .iter()
        .map(|n| n.typ())
        .collect();
    let plan = NsPlan::join_all(st.pid, &types);
    let seccomp = crate::seccomp::plan(&spec)?;
    let target = match &st.cgroup {
        Some(cg) if !opts.cgroups.is_empty() => Some(sub_cgroup(&opts.id, cg, &opts.cgroups)?),
        Some(cg) => Some(cg.clone()),
        None => None,
    };
    let console = crate::console::connect(opts.console.as_ref(), opts.console_socket.as_deref())?;
    let listener = crate::seccomp::connect_listener(seccomp.as_ref())?;
    let (parent, child) =
        crate::sync::pair().map_err(crate::error::sys("create sync socketpair"))?;
    let args = InitArgs {
        id: &opts.id,
        spec: &spec,
        bundle: &bundle.dir,
        rootfs: &bundle.rootfs,
        plan: &plan,
        fifo: None,
        console: console.as_ref(),
        no_pivot: false,
        no_new_keyring: true,
        preserve_fds: opts.preserve_fds,
        cgroup: st.cgroup.as_ref(),
        exec: true,
        seccomp: seccomp.as_ref(),
        listener: listener.as_ref(),
    };
    let stage1 = match moat_sys::process::clone3(0, false)
        .map_err(crate::error::sys("fork the exec process"))?
    {
        moat_sys::process::Forked::Child => {
            drop(parent);
            crate::init::run(&args, child)
        }
        moat_sys::process::Forked::Parent { pid, .. } => pid,
    };
    drop(child);
    drop(console);
    drop(listener);
    let mut pids = vec![stage1];
    let result = (|| -> Result<Pid> {
        if let Some(cg) = &target {
            cg.add_pid(stage1.as_raw())?;
        }
        parent
            .send(&ToInit::Start)
            .map_err(crate::error::sys("write to exec process"))?;
        let mut proc_pid = stage1;
        loop {
            let msg = parent
                .recv::<FromInit>()
                .map_err(crate::error::sys("read from exec process"))?;
            match msg {
                Some(FromInit::NeedListenerMessage) => {
                    let state = store.oci_state(&st);
                    let json = crate::seccomp::listener_message(
                        seccomp.as_ref(),
                        proc_pid.as_raw(),
                        &state,
                    );
                    parent
                        .send(&ToInit::ListenerMessage { json })
                        .map_err(crate::error::sys("write to exec process"))?;
                }
                Some(FromInit::InitPid { pid }) => {
                    proc_pid = Pid::from_raw(pid);
                    pids.push(proc_pid);
                    let _ = waitpid(stage1, None);
                    pids.retain(|p| *p != stage1);
                }
                Some(FromInit::Ready) => return Ok(proc_pid),
                Some(FromInit::Failed(f)) => return Err(f.into()),
                Some(other) => {
                    return Err(ContainerError::Unsupported(format!(
                        "unexpected message from exec process: {other:?}"
                    )))
                }
                None => {
                    return Err(ContainerError::InitDied(
                        "the exec process exited during setup".into(),
                    ))
                }
            }
        }
    })();
    let result = result.and_then(|pid| match &opts.pid_file {
        Some(pf) => crate::create::write_pid_file(pf, pid.as_raw()).map(|_| pid),
        None => Ok(pid),
    });
    match result {
        Ok(pid) => Ok(pid),
        Err(e) => {
            for p in pids {
                let _ = nix::sys::signal::kill(p, Signal::SIGKILL);
                let _ = waitpid(p, None);
            }
            Err(e)
        }
    }
}

/// The container's cgroup `cg` with the sub-cgroups of runc's `--cgroup` flags applied: `PATH`
/// moves every hierarchy, `CTRL[,CTRL]:PATH` the v1 hierarchies holding one of the controllers.
/// The path stays below the container's cgroup and must exist.
fn sub_cgroup(
    id: &str,
    cg: &moat_cgroups::Cgroup,
    specs: &[String],
) -> Result<moat_cgroups::Cgroup> {
    let mut dirs = cg.dirs();
    for spec in specs {
        let err = |message: String| ContainerError::SubCgroup {
            id: id.into(),
            spec: spec.clone(),
            message,
        };
        let (ctrls, sub) = match spec.split_once(':') {
            Some((c, p)) => (Some(c), p),
            None => (None, spec.as_str()),
        };
        let sub = Path::new(sub.trim_start_matches('/'));
        if sub.as_os_str().is_empty()
            || sub.components().any(|c| !matches!(c, Component::Normal(_)))
        {
            return Err(err(
                "the path must be relative to the container's cgroup, without ..".into(),
            ));
        }
        if ctrls.is_some() && matches!(cg, moat_cgroups::Cgroup::V2 { .. }) {
            return Err(err(
                "CONTROLLER:PATH is for cgroup v1; give PATH on cgroup v2".into(),
            ));
        }
        let mut matched = false;
        for (i, d) in cg.dirs().iter().enumerate() {
            let hierarchy = d
                .strip_prefix("/sys/fs/cgroup")
                .ok()
                .and_then(|r| r.components().next())
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .unwrap_or_default();
            let applies = match ctrls {
                None => true,
                Some(c) => c.split(',').any(|c| {
                    hierarchy
                        .split(',')
                        .any(|h| h == c || h == format!("name={c}"))
                }),
            };
            if applies {
                matched = true;
                dirs[i] = d.join(sub);
                if !dirs[i].is_dir() {
                    return Err(err(format!(
                        "sub-cgroup {} does not exist",
                        dirs[i].display()
                    )));
                }
            }
        }
        if !matched {
            return Err(err(format!(
                "no cgroup hierarchy of the container holds controller {}",
                ctrls.unwrap_or("")
            )));
        }
    }
    Ok(match cg {
        moat_cgroups::Cgroup::V1 { .. } => moat_cgroups::Cgroup::V1 { dirs },
        moat_cgroups::Cgroup::V2 { .. } => moat_cgroups::Cgroup::V2 {
            dir: dirs.pop().unwrap_or_default(),
        },
    })
}
