//! Choosing the accelerator. `/dev/kvm` existing proves nothing (a nested, pagetable-based KVM
//! can reset or crawl through a stock kernel's boot), so KVM is used only if a probe boot of the
//! guest kernel under KVM reaches the kernel's root-mount panic within [`PROBE_TIMEOUT`]; a
//! healthy KVM gets there in well under a second. The verdict is cached per host boot, QEMU and
//! kernel. `MOAT_VM_ACCEL=kvm|tcg` forces the choice.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::assets::Kernel;

/// How QEMU runs the guest's CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
const PROBE_OK: &str = "VFS: Unable to mount root fs";

/// The accelerator to use: forced by `MOAT_VM_ACCEL`, else the (cached) probe's verdict.
pub fn choose(qemu: &Path, kernel: &Kernel, cache: &Path) -> Accel {
    match std::env::var("MOAT_VM_ACCEL").as_deref() {
        Ok("kvm") => return Accel::Kvm,
        Ok("tcg") => return Accel::Tcg,
        _ => {}
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Accel::Tcg;
    }
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let key = format!("{} {} {}", boot_id.trim(), qemu.display(), kernel.release);
    let file = cache.join("accel-probe");
    if let Ok(text) = std::fs::read_to_string(&file) {
        if let Some((k, v)) = text.rsplit_once(' ') {
            if k == key {
                return if v.trim() == "kvm" {
                    Accel::Kvm
                } else {
                    Accel::Tcg
                };
            }
        }
    }
    let verdict = if probe_kvm(qemu, kernel) {
        Accel::Kvm
    } else {
        Accel::Tcg
    };
    let _ = std::fs::write(&file, format!("{key} {}", verdict.as_str()));
    verdict
}

/// Boot the kernel under KVM without a root filesystem and watch its console for the panic that
/// ends a healthy boot.
pub fn probe_kvm(qemu: &Path, kernel: &Kernel) -> bool {
    let child = Command::new(qemu)
        .args([
            "-M",
            "microvm,x-option-roms=off,rtc=off,acpi=on",
            "-accel",
            "kvm",
            "-cpu",
            "host",
        ])
        .args([
            "-m",
            "128",
            "-nodefaults",
            "-no-user-config",
            "-no-reboot",
            "-display",
            "none",
        ])
        .args(["-serial", "stdio", "-kernel"])
        .arg(&kernel.vmlinuz)
        .args(["-append", "console=ttyS0 panic=-1 loglevel=3"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return false };
    let Some(mut out) = child.stdout.take() else {
        let _ = child.kill();
        let _ = child.wait();
        return false;
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut seen = String::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            if seen.contains(PROBE_OK) {
                let _ = tx.send(true);
                return;
            }
        }
        let _ = tx.send(false);
    });
    let start = Instant::now();
    let ok = rx
        .recv_timeout(PROBE_TIMEOUT.saturating_sub(start.elapsed()))
        .unwrap_or(false);
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    ok
}
