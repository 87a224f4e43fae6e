//! The errors of the `moat` command's modules, each naming the step and the object (container,
//! image, path) that failed; `main` prints them as one `error: ...` line and maps them to an exit
//! status (125 for moat's own failures, 126/127 when the container's command cannot be executed
//! or found, as docker and podman do).

use std::path::PathBuf;

use moat_container::error::{ContainerError, Step};
use moat_image::ImageError;

/// Result type of the command's modules.
pub type Result<T, E = CliError> = std::result::Result<T, E>;

/// What can go wrong in a `moat` command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A flag or argument the user gave is malformed.
    #[error("{0}")]
    Usage(String),
    #[error("no such container: {0}")]
    NoSuchContainer(String),
    #[error("container id prefix {prefix:?} is ambiguous: it matches {matches}")]
    Ambiguous { prefix: String, matches: String },
    #[error("container name {name:?} is already in use by container {id}")]
    NameInUse { name: String, id: String },
    #[error(
        "invalid container name {0:?}: use [a-zA-Z0-9][a-zA-Z0-9_.-]*, at most 128 characters"
    )]
    BadName(String),
    #[error("container {id}: {action} is not possible while it is {status}")]
    BadStatus {
        id: String,
        action: &'static str,
        status: String,
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
    #[error("{what}: {source}")]
    Image {
        what: String,
        #[source]
        source: ImageError,
    },
    #[error("{what}: {source}")]
    Container {
        what: String,
        #[source]
        source: ContainerError,
    },
    #[error("{what}: {source}")]
    Vm {
        what: String,
        #[source]
        source: Box<moat_runtime::vm_backend::VmBackendError>,
    },
    #[error("network: {0}")]
    Network(String),
    /// An error reported by the monitor of a detached container, with its exit status.
    #[error("{message}")]
    Detached { code: u8, message: String },
}

impl CliError {
    /// An `Io` error for `what` on `path`.
    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| CliError::Io { what, path, source }
    }

    /// An `Image` error for the step `what`.
    pub fn image(what: impl Into<String>) -> impl FnOnce(ImageError) -> Self {
        let what = what.into();
        move |source| CliError::Image { what, source }
    }

    /// A `Vm` error (a container of the VM backend) for the step `what`.
    pub fn vm(
        what: impl Into<String>,
    ) -> impl FnOnce(moat_runtime::vm_backend::VmBackendError) -> Self {
        let what = what.into();
        move |source| CliError::Vm {
            what,
            source: Box::new(source),
        }
    }

    /// A `Container` error for the step `what`.
    pub fn container(what: impl Into<String>) -> impl FnOnce(ContainerError) -> Self {
        let what = what.into();
        move |source| CliError::Container { what, source }
    }

    /// A `Sys` error for the step `what`.
    pub fn sys(what: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> Self {
        let what = what.into();
        move |errno| CliError::Sys { what, errno }
    }

    /// The exit status for this error: 127 when the container's command was not found, 126 when
    /// it exists but cannot be executed, 125 for everything else.
    pub fn exit_code(&self) -> u8 {
        if let CliError::Detached { code, .. } = self {
            return *code;
        }
        if let CliError::Container {
            source: ContainerError::Init(f),
            ..
        } = self
        {
            if f.step == Step::Executable {
                return if f.errno == libc::ENOENT { 127 } else { 126 };
            }
        }
        125
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_container::error::InitFailure;

    #[test]
    fn exec_failures_map_to_126_and_127() {
        let e = |errno| CliError::Container {
            what: "create".into(),
            source: ContainerError::Init(InitFailure::new(Step::Executable, "exec x", errno)),
        };
        assert_eq!(e(nix::errno::Errno::ENOENT).exit_code(), 127);
        assert_eq!(e(nix::errno::Errno::EACCES).exit_code(), 126);
        assert_eq!(CliError::Usage("x".into()).exit_code(), 125);
    }
}
