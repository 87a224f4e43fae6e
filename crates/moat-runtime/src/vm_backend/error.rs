//! The VM backend's errors: one enum, each variant naming the container, path or request that
//! failed, the underlying error kept as `#[source]`.

use std::path::PathBuf;

use moat_container::state::Status;

#[derive(Debug, thiserror::Error)]
pub enum VmBackendError {
    #[error("container {0} does not exist")]
    NotFound(String),
    #[error("container {0} already exists")]
    Exists(String),
    #[error("cannot {action} container {id}: it is {status}")]
    BadStatus {
        id: String,
        action: &'static str,
        status: Status,
    },
    /// A command or option the VM backend does not implement (yet).
    #[error("{0}")]
    Unsupported(String),
    /// Bad input in the bundle or on the command line.
    #[error("{0}")]
    Invalid(String),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parse {}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The VM, its assets or the guest agent failed.
    #[error("{what}: {source}")]
    Vm {
        what: String,
        #[source]
        source: moat_vm::VmError,
    },
    #[error("{what}: {source}")]
    Cgroup {
        what: String,
        #[source]
        source: moat_cgroups::CgroupError,
    },
    #[error(transparent)]
    Container(#[from] moat_container::ContainerError),
    #[error("qemu {pid} of container {id} did not exit")]
    QemuStuck { id: String, pid: i32 },
    /// A container's terminal could not be set up (our terminal's mode, its detached relay).
    #[error("the terminal of container {id}: {reason}")]
    Terminal { id: String, reason: String },
}

pub type Result<T> = std::result::Result<T, VmBackendError>;

impl VmBackendError {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> VmBackendError {
        let path = path.into();
        move |source| VmBackendError::Io { what, path, source }
    }

    pub(crate) fn vm(what: impl Into<String>) -> impl FnOnce(moat_vm::VmError) -> VmBackendError {
        let what = what.into();
        move |source| VmBackendError::Vm { what, source }
    }
}
