//! `exec`: start a new process inside a running container. It joins every namespace of the
//! container's init (through /proc/<init>/ns), its cgroup, and gets the container's security
//! settings (capabilities, rlimits, no_new_privs, user) from the container's config unless the
//! caller overrides them. The same child code as `create` does the joining (stage 1 of `init`).

use std::path::PathBuf;

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
    if status != Status::Running {
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
    let console = crate::console::connect(opts.console_socket.as_deref())?;
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
        if let Some(cg) = &st.cgroup {
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
    match result {
        Ok(pid) => {
            if let Some(pf) = &opts.pid_file {
                crate::create::write_pid_file(pf, pid.as_raw())?;
            }
            Ok(pid)
        }
        Err(e) => {
            for p in pids {
                let _ = nix::sys::signal::kill(p, Signal::SIGKILL);
                let _ = waitpid(p, None);
            }
            Err(e)
        }
    }
}
