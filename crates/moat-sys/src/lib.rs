//! `moat-sys` owns every raw system call that the safe wrappers of `nix` do not cover, and with them
//! every `unsafe` block of the project. Each function here is a thin, typed wrapper: it takes and
//! returns owned file descriptors (`OwnedFd`) and `nix::Error` (an errno), and it never decides policy.
//!
//! What it must never do: allocate or take locks in the code that runs between `clone3` and
//! `execve` on behalf of a caller, or hide an errno behind a string.

pub mod bpf;
pub mod fd;
pub mod mount;
pub mod process;
pub mod random;
pub mod resolve;
pub mod sched;
pub mod seccomp;

pub use nix;
pub use nix::errno::Errno;

/// Result type of this crate: the errno of the failed call.
pub type Result<T> = std::result::Result<T, Errno>;
