//! Errors of the VM backend, each naming the path, command or request that failed.

use std::path::PathBuf;

use moat_agent_proto::{AgentError, DecodeError};

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("guest kernel not available in {}: {reason}; run `moat-vm-setup` (cargo run -p moat-vm --bin moat-vm-setup) as root with Debian apt reachable", dir.display())]
    KernelMissing { dir: PathBuf, reason: String },
    #[error("kernel module {name} not found under {}", dir.display())]
    ModuleMissing { name: String, dir: PathBuf },
    #[error("kernel module {} is compressed; only uncompressed .ko files are supported", path.display())]
    ModuleCompressed { path: PathBuf },
    #[error("moat's program {}: {reason}", path.display())]
    AgentBinary { path: PathBuf, reason: String },
    #[error("invalid VM config: {0}")]
    Config(String),
    #[error("the guest agent did not answer within {secs} s")]
    AgentTimeout { secs: u64 },
    #[error("the VM failed to start its agent: {reason}\n--- qemu stderr:\n{qemu_stderr}\n--- guest console:\n{console}")]
    GuestFailed {
        reason: String,
        qemu_stderr: String,
        console: String,
    },
    #[error("the guest agent speaks protocol version {guest}, the host {host}")]
    ProtocolVersion { guest: u32, host: u32 },
    #[error(
        "all {ports} agent ports of the VM stayed busy for {secs} s (other commands are attached)"
    )]
    PortsBusy { ports: usize, secs: u64 },
    #[error("the connection to the guest agent closed (the VM stopped?)")]
    Disconnected,
    #[error("bad frame from the guest agent: {0}")]
    Decode(#[from] DecodeError),
    #[error("encode request: {0}")]
    Encode(#[from] moat_agent_proto::EncodeError),
    #[error("the guest agent refused request {request}: {source}")]
    Agent {
        request: String,
        #[source]
        source: AgentError,
    },
    #[error("{what}: {errno}")]
    Mount {
        what: String,
        errno: nix::errno::Errno,
    },
    #[error("the server of the shared directory failed ({reason}): {stderr}")]
    Virtiofsd { reason: String, stderr: String },
    /// The VM's network attachment (taps, tc redirects, the namespace QEMU runs in).
    #[error("{what}: {reason}")]
    Net { what: String, reason: String },
    #[error("QMP {command}: {reason}")]
    Qmp { command: String, reason: String },
    /// A VM template could not be built or used (the caller boots without it).
    #[error("VM template {}: {reason}", dir.display())]
    Template { dir: PathBuf, reason: String },
    /// A clone's shared directory could not be served (moat-vmfs); the template is sound.
    #[error("serve the clone's shared directory: {0}")]
    Share(Box<VmError>),
    #[error("unexpected reply to {request}: {reply}")]
    UnexpectedReply { request: String, reply: String },
}

impl VmError {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> VmError {
        let path = path.into();
        move |source| VmError::Io { what, path, source }
    }
}

pub type Result<T> = std::result::Result<T, VmError>;
