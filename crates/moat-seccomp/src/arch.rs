//! Architectures: the target a filter is compiled for, the calling conventions ("sub-arches")
//! a filter can admit, and their `AUDIT_ARCH_*` values and syscall tables.
//!
//! What it must never do: guess a syscall number. A name missing from a table is unknown on that
//! convention and is reported, not invented.

use oci_spec::runtime::Arch as OciArch;

use crate::tables;

/// `__X32_SYSCALL_BIT`: x32 calls arrive with `AUDIT_ARCH_X86_64` and this bit set in `nr`.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// The machine a filter is compiled for (the "native" architecture of libseccomp).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    /// x86-64.
    X86_64,
    /// 64-bit Arm.
    Aarch64,
}

impl Arch {
    /// The architecture this crate was built for, if it is supported.
    pub fn native() -> Option<Arch> {
        if cfg!(target_arch = "x86_64") {
            Some(Arch::X86_64)
        } else if cfg!(target_arch = "aarch64") {
            Some(Arch::Aarch64)
        } else {
            None
        }
    }

    /// The calling convention whose syscalls this machine executes natively.
    pub fn sub_arch(self) -> SubArch {
        match self {
            Arch::X86_64 => SubArch::X86_64,
            Arch::Aarch64 => SubArch::Aarch64,
        }
    }
}

/// A syscall calling convention, as seen in `seccomp_data.arch` (and, for x32, `nr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SubArch {
    /// x86-64 native calls.
    X86_64,
    /// x32 calls (x86-64 kernel, `X32_SYSCALL_BIT` set).
    X32,
    /// i386 calls (`int 0x80` or compat entry).
    I386,
    /// aarch64 native calls.
    Aarch64,
}

/// `AUDIT_ARCH_X86_64`.
pub const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// `AUDIT_ARCH_I386`.
pub const AUDIT_ARCH_I386: u32 = 0x4000_0003;
/// `AUDIT_ARCH_AARCH64`.
pub const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;

impl SubArch {
    /// The value the kernel puts in `seccomp_data.arch` for this convention.
    pub fn audit_arch(self) -> u32 {
        match self {
            SubArch::X86_64 | SubArch::X32 => AUDIT_ARCH_X86_64,
            SubArch::I386 => AUDIT_ARCH_I386,
            SubArch::Aarch64 => AUDIT_ARCH_AARCH64,
        }
    }

    /// The syscall number of `name` in this convention (x32 numbers include the x32 bit).
    pub fn syscall_nr(self, name: &str) -> Option<u32> {
        tables::lookup(self.table(), name)
    }

    /// The full `(name, number)` table of this convention, sorted by name.
    pub fn table(self) -> &'static [(&'static str, u32)] {
        match self {
            SubArch::X86_64 => tables::x86_64::SYSCALLS,
            SubArch::X32 => tables::x32::SYSCALLS,
            SubArch::I386 => tables::i386::SYSCALLS,
            SubArch::Aarch64 => tables::aarch64::SYSCALLS,
        }
    }

    /// The OCI / libseccomp name of this convention.
    pub fn scmp_name(self) -> &'static str {
        match self {
            SubArch::X86_64 => "SCMP_ARCH_X86_64",
            SubArch::X32 => "SCMP_ARCH_X32",
            SubArch::I386 => "SCMP_ARCH_X86",
            SubArch::Aarch64 => "SCMP_ARCH_AARCH64",
        }
    }

    /// Map an OCI architecture; `None` for ones without a syscall table here.
    pub fn from_oci(arch: OciArch, native: Arch) -> Option<SubArch> {
        match arch {
            OciArch::ScmpArchNative => Some(native.sub_arch()),
            OciArch::ScmpArchX86_64 => Some(SubArch::X86_64),
            OciArch::ScmpArchX86 => Some(SubArch::I386),
            OciArch::ScmpArchX32 => Some(SubArch::X32),
            OciArch::ScmpArchAarch64 => Some(SubArch::Aarch64),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_sorted_and_unique() {
        for sub in [
            SubArch::X86_64,
            SubArch::X32,
            SubArch::I386,
            SubArch::Aarch64,
        ] {
            let t = sub.table();
            assert!(t.windows(2).all(|w| w[0].0 < w[1].0), "{sub:?} not sorted");
            assert!(t.len() > 250, "{sub:?} too small");
        }
    }

    #[test]
    fn well_known_numbers() {
        assert_eq!(SubArch::X86_64.syscall_nr("read"), Some(0));
        assert_eq!(SubArch::X86_64.syscall_nr("getcwd"), Some(79));
        assert_eq!(SubArch::X86_64.syscall_nr("clone3"), Some(435));
        assert_eq!(SubArch::X86_64.syscall_nr("chown32"), None);
        assert_eq!(SubArch::I386.syscall_nr("chown32"), Some(212));
        assert_eq!(SubArch::I386.syscall_nr("socketcall"), Some(102));
        assert_eq!(SubArch::X32.syscall_nr("read"), Some(X32_SYSCALL_BIT));
        assert_eq!(
            SubArch::X32.syscall_nr("execve"),
            Some(X32_SYSCALL_BIT | 520)
        );
        assert_eq!(SubArch::Aarch64.syscall_nr("openat"), Some(56));
        assert_eq!(SubArch::Aarch64.syscall_nr("open"), None);
    }
}
