//! The static guest agent for tests that boot VMs: `$MOAT_AGENT_BIN`, or built now (static glibc,
//! as moat-vm's tests do), with the guest kernel fetched into the cache when missing.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The static guest agent (`$MOAT_AGENT_BIN`, or built now as moat-vm's tests build it), with
/// the guest kernel fetched into the cache when missing.
pub fn agent() -> &'static Path {
    static A: OnceLock<PathBuf> = OnceLock::new();
    A.get_or_init(|| {
        let cache = moat_vm::assets::cache_dir();
        moat_vm::assets::ensure_kernel(&cache).unwrap_or_else(|e| panic!("{e}"));
        if let Some(p) = std::env::var_os("MOAT_AGENT_BIN") {
            return p.into();
        }
        let target_dir = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target"));
        let triple = "x86_64-unknown-linux-gnu";
        let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "-q", "-p", "moat-agent", "--release"])
            .args(["--target", triple])
            .env("CARGO_TARGET_DIR", &target_dir)
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .current_dir(workspace_root())
            .status()
            .expect("run cargo build -p moat-agent");
        assert!(st.success(), "cargo build -p moat-agent failed");
        target_dir.join(triple).join("release/moat-agent")
    })
}
