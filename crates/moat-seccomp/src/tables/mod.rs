//! Syscall name → number tables, one generated file per calling convention.
//!
//! What it must never do: be generated at build time (CI may lack kernel headers). Regenerate
//! with `tools/gen-syscall-tables.py`, review, commit.

pub(crate) mod aarch64;
pub(crate) mod i386;
pub(crate) mod x32;
pub(crate) mod x86_64;

/// Look `name` up in a name-sorted table.
pub(crate) fn lookup(table: &[(&str, u32)], name: &str) -> Option<u32> {
    table
        .binary_search_by(|(n, _)| (*n).cmp(name))
        .ok()
        .map(|i| table[i].1)
}
