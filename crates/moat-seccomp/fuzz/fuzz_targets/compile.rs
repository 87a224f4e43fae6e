//! Fuzz target: arbitrary bytes → JSON → `linux.seccomp` → compile for x86-64 and aarch64.
//! Compiling must never panic, every program must validate, and a syscall the profile denies
//! without argument conditions must never be allowed (checked with the BPF interpreter).
#![no_main]

#[path = "../../tests/common/property.rs"]
mod property;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = property::check_bytes(data) {
        panic!("{e}");
    }
});
