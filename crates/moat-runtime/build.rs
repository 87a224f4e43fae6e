//! Link options of the `moat-runtime` binary.
//!
//! `-z pack-relative-relocs` (DT_RELR) stores the relative relocations of the position-independent
//! binary as a bitmap instead of one 24-byte record each. The loader reads every record at each
//! start, so the ~400 KB of `.rela.dyn` was read into memory by every `create`: a third of the gap
//! in peak RSS to crun (bench/RESULTS.md). GNU ld (>= 2.38) enables it only when the C library
//! supports it (glibc >= 2.36, `GLIBC_ABI_DT_RELR`) and otherwise ignores it; lld supports it too.
fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "linux" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
