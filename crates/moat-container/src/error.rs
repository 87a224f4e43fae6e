//! The errors of the namespaces backend. Each variant names the container id, the path or the
//! step that failed. Errors that happen inside the container's init process cross the process
//! boundary as a typed [`InitFailure`] (step + errno + detail), never as a formatted string only.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The step of container setup that failed inside the init process.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    JoinNamespace,
    Unshare,
    Fork,
    Mount,
    Device,
    PivotRoot,
    MaskPath,
    ReadonlyPath,
    Sysctl,
    Hostname,
    Hook,
    Console,
    Rlimit,
    Capabilities,
    User,
    Cwd,
    Executable,
    Seccomp,
    Apparmor,
    Scheduler,
    IoPriority,
    Personality,
    MemoryPolicy,
    Setup,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned));
        f.write_str(s.as_deref().unwrap_or("setup"))
    }
}

/// A failure inside the container's init, as sent to the runtime over the sync socket.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
#[error("{step}: {detail}{}", errno_suffix(*errno))]
pub struct InitFailure {
    pub step: Step,
    /// What was being done, with the path inside the container (e.g. "mount proc on /proc").
    pub detail: String,
    /// The errno of the failing system call, 0 when there is none.
    pub errno: i32,
}

fn errno_suffix(errno: i32) -> String {
    if errno == 0 {
        String::new()
    } else {
        format!(": {}", nix::errno::Errno::from_raw(errno).desc())
    }
}

impl InitFailure {
    pub fn new(step: Step, detail: impl Into<String>, errno: nix::errno::Errno) -> Self {
        InitFailure {
            step,
            detail: detail.into(),
            errno: errno as i32,
        }
    }
    pub fn msg(step: Step, detail: impl Into<String>) -> Self {
        InitFailure {
            step,
            detail: detail.into(),
            errno: 0,
        }
    }
}

/// Errors of the namespaces backend.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("container id {0:?} is invalid: use 1-1024 characters from [A-Za-z0-9_+.-], not starting with '.'")]
    InvalidId(String),
    #[error("container {0} already exists")]
    Exists(String),
    #[error("container {0} does not exist")]
    NotFound(String),
    #[error("read bundle config {path}: {source}")]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parse {path}: {field}: {message}")]
    ParseConfig {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("invalid config {field}: {message}")]
    InvalidConfig { field: String, message: String },
    #[error("container {id}: {action} is not possible while the container is {status}")]
    BadStatus {
        id: String,
        action: &'static str,
        status: String,
    },
    #[error("container {0}: cannot exec in a paused container (use --ignore-paused to override)")]
    ExecPaused(String),
    #[error("--cgroup {spec:?} (container {id}): {message}")]
    SubCgroup {
        id: String,
        spec: String,
        message: String,
    },
    #[error("state of container {id} at {path}: {message}")]
    State {
        id: String,
        path: PathBuf,
        message: String,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {errno}")]
    Sys {
        what: String,
        errno: nix::errno::Errno,
    },
    #[error("cgroup: {0}")]
    Cgroup(#[from] moat_cgroups::CgroupError),
    #[error("container init: {0}")]
    Init(#[from] InitFailure),
    #[error("container init exited during setup ({0}) without reporting an error")]
    InitDied(String),
    #[error("{kind} hook {path}: {message}")]
    Hook {
        kind: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("console socket {path}: {source}")]
    ConsoleSocket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Unsupported(String),
}

pub type Result<T> = std::result::Result<T, ContainerError>;

pub(crate) fn sys(what: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> ContainerError {
    let what = what.into();
    move |errno| ContainerError::Sys { what, errno }
}

pub(crate) fn io(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> ContainerError {
    let path = path.into();
    move |source| ContainerError::Io { what, path, source }
}
