//! The errors of a VM pod, each naming the container, exec or path that failed; turned into a
//! ttrpc status (one line) at the Task API boundary.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum VmPodError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("container {id}: config.json: {reason}")]
    Spec { id: String, reason: String },
    #[error("{what}: {source}")]
    Vm {
        what: String,
        #[source]
        source: moat_vm::VmError,
    },
    #[error("{request}: the agent answered: {source}")]
    Agent {
        request: String,
        #[source]
        source: moat_agent_proto::AgentError,
    },
    #[error("{request}: the VM is gone (agent connection closed)")]
    Disconnected { request: String },
    #[error("{request}: no answer from the agent within {secs} s")]
    Timeout { request: String, secs: u64 },
    #[error("{request}: unexpected answer {reply}")]
    UnexpectedReply { request: String, reply: String },
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Unsupported(String),
}

pub type Result<T> = std::result::Result<T, VmPodError>;

impl VmPodError {
    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| VmPodError::Io { what, path, source }
    }

    pub fn vm(what: impl Into<String>) -> impl FnOnce(moat_vm::VmError) -> Self {
        let what = what.into();
        move |source| VmPodError::Vm { what, source }
    }
}
