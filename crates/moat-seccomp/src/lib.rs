//! `moat-seccomp` compiles the OCI runtime spec's `linux.seccomp` into a classic BPF program for
//! `seccomp(SECCOMP_SET_MODE_FILTER)`, in pure Rust (no libseccomp at build or run time). It also
//! ships the default profile as a reviewed data file and a BPF interpreter to check programs
//! without installing them.
//!
//! What it must never do: install anything or touch a file descriptor. The `seccomp(2)` call
//! and the hand-off of the user-notification listener belong to `moat-sys` and the runtime; this
//! crate only says which flags to pass ([`Compiled::flags`]) and whether a listener is expected
//! ([`Compiled::needs_notify_listener`]). The semantics it follows (libseccomp's and runc's,
//! with the differences named) are documented on [`compile()`].
#![forbid(unsafe_code)]

mod arch;
mod bpf;
mod codegen;
mod compile;
mod profile;
mod tables;

pub use arch::{
    Arch, SubArch, AUDIT_ARCH_AARCH64, AUDIT_ARCH_I386, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT,
};
pub use bpf::{
    action_rank, evaluate, op, program_bytes, ret, validate, InvalidProgram, SeccompData,
    SockFilter, MAX_INSNS,
};
pub use compile::{compile, filter_flags, Compiled, BAD_ARCH_ACTION};
pub use profile::{allow_only, default_profile, DEFAULT_PROFILE_JSON};

/// Why a `linux.seccomp` could not be compiled. Each variant names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeccompError {
    /// An `errnoRet` (or `defaultErrnoRet`) above 65535 does not fit `SECCOMP_RET_DATA`.
    #[error("{field}: {value} does not fit the 16-bit SECCOMP_RET_DATA")]
    ErrnoOutOfRange {
        /// The JSON path of the value.
        field: String,
        /// The value given.
        value: u32,
    },
    /// An argument index outside 0..=5.
    #[error("{field}: argument index {index} out of range 0..=5")]
    ArgIndex {
        /// The JSON path of the index.
        field: String,
        /// The index given.
        index: usize,
    },
    /// `SCMP_ACT_NOTIFY` as default action (runc refuses it too: the runtime's own calls after
    /// installing the filter would wait on a listener that does not exist yet).
    #[error("linux.seccomp.defaultAction: SCMP_ACT_NOTIFY cannot be the default action")]
    NotifyDefault,
    /// The program exceeds the kernel's `BPF_MAXINSNS`.
    #[error("linux.seccomp: the compiled program has {0} instructions, over the kernel's 4096")]
    TooLong(usize),
    /// The generated program failed validation: a bug in this crate.
    #[error("linux.seccomp: internal error, generated an invalid program: {0}")]
    Internal(String),
}

#[cfg(test)]
mod tests;
