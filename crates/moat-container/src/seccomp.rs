//! The container's seccomp filter: compiled by `moat-seccomp` in the runtime before anything is
//! created (so a bad profile fails `create` cleanly), installed by the init as the last step
//! before `execve` (after no_new_privs and capabilities) — or, without no_new_privs, before the
//! capabilities are dropped, since installing then needs CAP_SYS_ADMIN (runc's order). With
//! `SCMP_ACT_NOTIFY` rules, the listener descriptor goes to `listenerPath` over SCM_RIGHTS with
//! the container process state, as the OCI runtime spec describes.

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

/// Install the filter on the calling (init) process; returns the notify listener descriptor, if
/// the filter has one (the init hands it to the runtime, which sends it to `listenerPath` from
/// the host's mount namespace: the path is not reachable from inside the container).
pub fn install(plan: &SeccompPlan) -> std::result::Result<Option<OwnedFd>, InitFailure> {
    moat_sys::seccomp::set_mode_filter(&plan.program, plan.flags)
        .map_err(|e| InitFailure::new(Step::Seccomp, "install the seccomp filter", e))
}

impl SeccompPlan {
    /// Whether the filter hands a notify descriptor out (then it is installed before `Ready`).
    pub fn has_listener(&self) -> bool {
        self.flags & moat_sys::seccomp::FILTER_FLAG_NEW_LISTENER != 0
    }
}

/// Runtime side of `FromInit::SeccompFd`: send the descriptor the init handed over to the plan's
/// listener, with the container's state.
pub fn forward_listener(
    plan: Option<&SeccompPlan>,
    fd: Option<OwnedFd>,
    pid: i32,
    state: &crate::state::OciState,
) -> Result<()> {
    let fd = fd.ok_or_else(|| {
        ContainerError::Unsupported("the seccomp notify descriptor is missing".into())
    })?;
    match plan.and_then(|p| p.listener_path.as_ref().map(|path| (p, path))) {
        Some((p, path)) => send_listener(
            &fd,
            path,
            &p.listener_metadata,
            pid,
            &serde_json::to_string(state).unwrap_or_default(),
        ),
        None => Ok(()),
    }
}

/// Runtime side: send the notify descriptor of process `pid` to the listener at `path`, with the
/// container process state the OCI runtime spec defines.
pub fn send_listener(
    fd: &OwnedFd,
    path: &PathBuf,
    metadata: &str,
    pid: i32,
    state_json: &str,
) -> Result<()> {
    let state: serde_json::Value =
        serde_json::from_str(state_json).unwrap_or(serde_json::Value::Null);
    let msg = serde_json::json!({
        "ociVersion": crate::state::OCI_VERSION,
        "fds": ["seccompFd"],
        "pid": pid,
        "metadata": metadata,
        "state": state,
    });
    let sock =
        std::os::unix::net::UnixStream::connect(path).map_err(|source| ContainerError::Io {
            what: "connect to seccomp listener",
            path: path.clone(),
            source,
        })?;
    moat_sys::fd::send_fds(sock.as_fd(), msg.to_string().as_bytes(), &[fd.as_raw_fd()]).map_err(
        crate::error::sys(format!(
            "send the seccomp notify descriptor to {}",
            path.display()
        )),
    )
}
