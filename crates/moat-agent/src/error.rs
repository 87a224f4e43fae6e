//! The agent's errors and their translation into the wire's typed [`AgentError`].

use std::path::{Path, PathBuf};

use moat_agent_proto::{AgentError, ErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum AgentFailure {
    #[error("{what}: {errno}")]
    Sys {
        what: String,
        errno: nix::errno::Errno,
    },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not found: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    Exists(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("rootfs: {0}")]
    Rootfs(String),
    #[error("busy: {0}")]
    Busy(String),
    #[error(transparent)]
    Container(#[from] moat_container::ContainerError),
    #[error(transparent)]
    Cgroup(#[from] moat_cgroups::CgroupError),
}

impl AgentFailure {
    pub fn io(what: &'static str, path: impl AsRef<Path>, source: std::io::Error) -> Self {
        AgentFailure::Io {
            what,
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub fn to_wire(&self) -> AgentError {
        let code = match self {
            AgentFailure::Sys { .. } | AgentFailure::Io { .. } => ErrorCode::Io,
            AgentFailure::NotFound(_) => ErrorCode::NotFound,
            AgentFailure::Exists(_) => ErrorCode::AlreadyExists,
            AgentFailure::Invalid(_) => ErrorCode::InvalidArgument,
            AgentFailure::Rootfs(_) => ErrorCode::Rootfs,
            AgentFailure::Busy(_) => ErrorCode::Busy,
            AgentFailure::Cgroup(_) => ErrorCode::Container,
            AgentFailure::Container(moat_container::ContainerError::NotFound(_)) => {
                ErrorCode::NotFound
            }
            AgentFailure::Container(moat_container::ContainerError::Exists(_)) => {
                ErrorCode::AlreadyExists
            }
            AgentFailure::Container(_) => ErrorCode::Container,
        };
        AgentError {
            code,
            message: self.to_string(),
        }
    }
}

pub type Result<T> = std::result::Result<T, AgentFailure>;
