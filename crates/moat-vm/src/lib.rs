//! `moat-vm`: VM isolation for moat. A container runs inside a lightweight VM with its own guest
//! kernel; inside, `moat-agent` (PID 1) runs it with the namespaces backend. This crate owns the
//! host side: the [`Hypervisor`] interface and its QEMU `microvm` backend ([`qemu`]), the
//! accelerator choice ([`accel`]), the guest assets (kernel, initramfs, root filesystem disk:
//! [`assets`]), the directory shared with the guest for bind mounts ([`virtiofs`]; FUSE over a
//! serial port for a VM resumed from a template: [`fuse_share`]), the network
//! attachment (taps joined by tc redirects to the interfaces of a network namespace: [`net`]) and
//! the client of the agent protocol ([`client`]).
//!
//! What it must never do: trust the guest (every byte from the agent is decoded as hostile), leave
//! a QEMU process or a run directory behind, or write a container's disk that was attached
//! read-only. Transport decisions are in docs/vm-transport.md.
#![forbid(unsafe_code)]

pub mod accel;
pub mod agent;
pub mod assets;
pub mod client;
pub mod cpio;
pub mod error;
pub mod fuse_share;
pub mod net;
pub mod qemu;
pub mod qmp;
pub mod reclaim;
pub mod template;
pub mod virtiofs;

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

pub use client::{AgentClient, ProcessOutput};
pub use error::{Result, VmError};
pub use virtiofs::{SharedBind, SharedDir};

/// A disk attached to the guest as virtio-blk; the agent finds it by `serial`.
#[derive(Debug, Clone)]
pub struct Disk {
    pub path: PathBuf,
    /// At most 20 bytes (virtio-blk's serial field), `[A-Za-z0-9_-]`.
    pub serial: String,
    pub readonly: bool,
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub cmdline: String,
    pub memory_mib: u32,
    pub vcpus: u32,
    /// Agent ports (virtio-serial), each one host connection at a time: how many host commands
    /// can be attached at once (e.g. a foreground `exec` and a `ps`).
    pub agent_ports: u32,
    pub disks: Vec<Disk>,
    /// A directory shared with the guest: over virtiofs (tag [`moat_agent_proto::SHARE_TAG`]),
    /// served by one virtiofsd, guest RAM then a shared memfd, when the VM boots cold; over FUSE
    /// on a serial port, served by `moat-vmfs` ([`fuse_share`]), when it is a clone.
    pub shared: Option<SharedDir>,
    /// The network namespace QEMU runs in (the one [`net::attach`] joined the `nics` to);
    /// `None`: a new, empty one (the guest reaches no network).
    pub netns: Option<PathBuf>,
    /// The VM's network cards (`virtio-net-device`), each on a tap of `netns`.
    pub nics: Vec<net::Nic>,
    /// Parent of the VM's private run directory.
    pub run_parent: PathBuf,
    /// How long to wait for the agent's `Ready` after QEMU started.
    pub agent_timeout: Duration,
    /// Resume a clone of a template of this VM's shape instead of booting the kernel (building
    /// the template on first use), where the shape allows it (see [`template`]); a cold boot otherwise, and after a one-line notice when the template
    /// cannot be used. `MOAT_VM_TEMPLATES=0` turns templates off.
    pub template: bool,
}

/// Guest RAM moat adds to a container's (or a pod's) memory: what the guest needs for itself
/// before a container may use its limit. Measured in a 128 MiB clone (Debian's cloud kernel,
/// 6.1): 33 MiB the kernel keeps (MemTotal 95 MiB), 19 MiB of initramfs (agent and modules, in
/// RAM), 24 MiB of virtio-serial receive buffers (virtio-mmio offers 1024-entry queues and the
/// console driver fills each port's with 4 KiB buffers: the 4 agent ports, the share's and the
/// control queue) and ~18 MiB of other slab, leaving 25 MiB. With less than the limit free, the
/// guest's OOM killer acts before the container's memory cgroup does: a limit silently lower
/// than asked, and moat's own guest processes among the candidates. With 128 MiB, a container
/// has its limit plus ~25 MiB of page cache.
pub const MEMORY_OVERHEAD_MIB: u64 = 128;
/// A container's (or pod's) memory when nothing limits it: a 256 MiB guest.
pub const DEFAULT_MEMORY_MIB: u64 = 128;

/// The kernel command line moat uses: serial console (errors only), no reboot loop on panic.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 quiet loglevel=4 panic=-1 rdinit=/init";

impl VmConfig {
    pub fn new(kernel: PathBuf, initramfs: PathBuf) -> VmConfig {
        VmConfig {
            kernel,
            initramfs,
            // MOAT_VM_DEBUG=1: every kernel and agent message on the console log.
            cmdline: if std::env::var_os("MOAT_VM_DEBUG").is_some() {
                DEFAULT_CMDLINE.replace("quiet loglevel=4", "loglevel=7 printk.devkmsg=on")
            } else {
                DEFAULT_CMDLINE.into()
            },
            memory_mib: 256,
            vcpus: 1,
            agent_ports: 1,
            disks: vec![],
            shared: None,
            netns: None,
            nics: vec![],
            run_parent: std::env::temp_dir(),
            agent_timeout: Duration::from_secs(60),
            template: false,
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        for d in &self.disks {
            let ok = !d.serial.is_empty()
                && d.serial.len() <= 20
                && d.serial
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !ok {
                return Err(VmError::Config(format!("disk serial {:?}", d.serial)));
            }
            // QEMU's option syntax splits on commas.
            if d.path.to_string_lossy().contains(',') {
                return Err(VmError::Config(format!(
                    "disk path {} contains a comma",
                    d.path.display()
                )));
            }
        }
        for n in &self.nics {
            let mac_ok =
                n.mac.len() == 17 && n.mac.bytes().all(|b| b.is_ascii_hexdigit() || b == b':');
            let tap_ok = !n.tap.is_empty()
                && n.tap.len() <= 15
                && n.tap
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !mac_ok || !tap_ok {
                return Err(VmError::Config(format!("nic {} {}", n.tap, n.mac)));
            }
        }
        if !self.nics.is_empty() && self.netns.is_none() {
            return Err(VmError::Config(
                "nics without their network namespace".into(),
            ));
        }
        for p in [&self.kernel, &self.initramfs] {
            if !p.is_file() {
                return Err(VmError::Config(format!("{} is not a file", p.display())));
            }
        }
        Ok(())
    }
}

/// A hypervisor: boots a VM from a [`VmConfig`] and returns once its agent is ready.
pub trait Hypervisor {
    type Instance: VmInstance;
    fn boot(&self, cfg: &VmConfig) -> Result<Self::Instance>;
}

/// A booted VM.
pub trait VmInstance {
    /// Host pid of the VM process.
    fn pid(&self) -> u32;
    /// The connection to the guest agent.
    fn agent(&mut self) -> Result<&mut AgentClient>;
    fn try_wait(&mut self) -> Result<Option<ExitStatus>>;
    fn wait(&mut self) -> Result<ExitStatus>;
    fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>>;
    /// Ask the agent to power off; kill the VM after `grace`.
    fn stop(&mut self, grace: Duration) -> Result<ExitStatus>;
    fn kill(&mut self) -> Result<ExitStatus>;
}
