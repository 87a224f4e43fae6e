//! What the VM tests share: the guest assets (kernel, initramfs with the agent built now), a
//! busybox root filesystem disk and a container config.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use moat_vm::accel::Accel;

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The static agent: `$MOAT_AGENT_BIN`, or built now (glibc with crt-static, see the report in
/// docs/vm-transport.md for why not musl yet).
pub fn agent_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("MOAT_AGENT_BIN") {
        return p.into();
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let triple = "x86_64-unknown-linux-gnu";
    let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "-q",
            "-p",
            "moat-agent",
            "--release",
            "--target",
            triple,
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .current_dir(workspace_root())
        .status()
        .expect("run cargo build -p moat-agent");
    assert!(st.success(), "cargo build -p moat-agent failed");
    target_dir.join(triple).join("release/moat-agent")
}

pub struct Assets {
    pub kernel: moat_vm::assets::Kernel,
    pub initramfs: PathBuf,
    pub accel: Accel,
}

pub fn assets() -> &'static Assets {
    static A: OnceLock<Assets> = OnceLock::new();
    A.get_or_init(|| {
        let cache = moat_vm::assets::cache_dir();
        let kernel = moat_vm::assets::ensure_kernel(&cache).unwrap_or_else(|e| panic!("{e}"));
        let initramfs = moat_vm::assets::ensure_initramfs(&cache, &kernel, &agent_binary())
            .unwrap_or_else(|e| panic!("{e}"));
        let accel = moat_vm::accel::choose(Path::new("qemu-system-x86_64"), &kernel, &cache);
        eprintln!("guest kernel {}, accel {accel:?}", kernel.release);
        Assets {
            kernel,
            initramfs,
            accel,
        }
    })
}

/// A busybox root filesystem as an ext4 image in `dir`.
pub fn busybox_disk(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static installed");
    for tool in ["sh", "uname", "ps", "touch", "echo", "sleep", "cat"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(tool)).unwrap();
    }
    let img = dir.join("rootfs.ext4");
    moat_vm::assets::build_ext4_image(&root, &img).unwrap();
    img
}

pub fn config(args: &[&str]) -> String {
    serde_json::json!({
        "ociVersion": "1.2.0",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/bin"],
            "cwd": "/",
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "guest",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "mode=755", "size=1m"]}
        ],
        // No pid namespace: the container sees every process of the guest.
        "linux": {"namespaces": [{"type": "mount"}, {"type": "uts"}, {"type": "ipc"}]}
    })
    .to_string()
}
