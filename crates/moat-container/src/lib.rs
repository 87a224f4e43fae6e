//! `moat-container` is the namespaces backend of moat: it turns an OCI bundle into a running
//! container with namespaces, a pivoted rootfs, cgroups, capabilities and hooks, and keeps its state
//! under the runtime root. One file per lifecycle verb (`create`, `start`, `kill`, `delete`), the
//! init's side of creation in `init`, and the pieces they share beside them.
//!
//! What it must never do: follow a path from a bundle out of its root, leak a runtime descriptor
//! into a container, or leave a mount, cgroup, process or state directory behind after a failure.
#![forbid(unsafe_code)]

pub mod console;
pub mod copyup;
pub mod create;
pub mod defaults;
pub mod delete;
pub mod error;
pub mod exec;
pub mod hooks;
mod idmap;
pub mod init;
pub mod kill;
pub mod lsm;
pub mod mountopts;
pub mod namespaces;
pub mod pause;
pub mod process;
pub mod propagation;
pub mod resources;
pub mod rootfs;
pub mod sched;
pub mod seccomp;
pub mod spec;
pub mod start;
pub mod state;
pub mod sync;

pub use create::{create, CreateOptions, Created};
pub use error::{ContainerError, Result};
pub use state::{OciState, StateFile, Status, Store};
