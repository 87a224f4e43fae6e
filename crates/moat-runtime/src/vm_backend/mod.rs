//! The VM backend of the runtime commands: a bundle whose config.json carries the annotation
//! `io.moat.isolation=vm` runs inside its own QEMU microvm (`moat-vm`), where `moat-agent` runs
//! it with the namespaces backend.
//!
//! `create` builds an ext4 image of the rootfs, shares the spec's bind mounts over virtiofs
//! (`mounts`), boots the VM and creates the container in the guest, then *detaches*: QEMU and
//! virtiofsd (their own process groups) outlive the command, and `vm.json` in the container's
//! state dir records their pids and start times, the agent socket and the image (`state`).
//! Every later command reattaches to the agent over that socket. The guest runs a one-container
//! sandbox (`moat.sandbox=single`): it powers off once the container's init has exited, so
//! "QEMU is gone" is "the container stopped", and `state` never needs to talk to the guest.
//!
//! Files: `lifecycle` (create, start, state, kill, pause, resume, delete, run), `exec`
//! (exec, ps, events), `follow` (a foreground process's stdio and signals), `terminal` (a
//! process's terminal: the guest's pty relayed to our terminal or to a host pty whose master
//! goes to `--console-socket`, by a detached relay process when the command returns), `mounts`,
//! `network` (the VM joins the spec's network namespace), `state`, [`error`].
//!
//! What it must never do: leave a QEMU or virtiofsd process, mount, socket, image or cgroup
//! behind after `delete`, act on a recycled pid (pids are checked against their recorded start
//! times, and signalled through pidfds), or act on the host for a command it does not support.

pub mod error;
mod exec;
mod follow;
mod lifecycle;
mod mounts;
mod network;
pub mod reclaimer;
mod state;
pub mod terminal;

use std::path::Path;

use moat_container::Store;

pub use error::{Result, VmBackendError};
pub use exec::{base_process, events, exec, ps, stats};
pub use lifecycle::{
    create, delete, kill, list, pause, resume, run, run_attached, run_code, start, state, vm_size,
};

/// The annotation that selects the backend, and its value for a VM.
pub const ISOLATION_ANNOTATION: &str = "io.moat.isolation";
/// The annotation `state` carries for a VM container: the accelerator chosen (`kvm` or `tcg`).
pub const ACCEL_ANNOTATION: &str = "io.moat.vm.accelerator";
/// On a bundle: the path of an ext4 image of the container's root filesystem, exactly
/// [`moat_vm::template::DISK_BYTES`] long (`moat run` keeps one per image). With it, and bind
/// mounts that are all small files, the VM is a clone of a template and the container writes to
/// an overlay in the guest; otherwise the VM boots cold and shares the bundle's rootfs.
pub const ROOTFS_IMAGE_ANNOTATION: &str = "io.moat.vm.rootfs-image";
/// Set by moat in the state: `clone` (resumed from a template) or `cold` (booted).
pub const START_ANNOTATION: &str = "io.moat.vm.start";
/// Guest RAM on top of the container's memory limit, and the container's memory when the spec
/// sets no limit (shared with the shim's VM pods).
pub use moat_vm::{DEFAULT_MEMORY_MIB, MEMORY_OVERHEAD_MIB};

/// Which backend runs a container (a closed set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Namespaces,
    Vm,
}

impl Backend {
    /// The backend a bundle asks for. Cheap for the common case: the config is parsed again only
    /// when its text mentions the annotation.
    pub fn of_bundle(bundle: &Path) -> Result<Backend> {
        let path = bundle.join("config.json");
        let Ok(text) = std::fs::read(&path) else {
            // Let the namespaces backend report the missing config.
            return Ok(Backend::Namespaces);
        };
        let needle = ISOLATION_ANNOTATION.as_bytes();
        if !text.windows(needle.len()).any(|w| w == needle) {
            return Ok(Backend::Namespaces);
        }
        let b = moat_container::spec::load_bundle(bundle)?;
        let want = b
            .spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(ISOLATION_ANNOTATION).cloned());
        match want.as_deref() {
            Some("vm") => Ok(Backend::Vm),
            None | Some("namespaces") | Some("runc") => Ok(Backend::Namespaces),
            Some(other) => Err(VmBackendError::Invalid(format!(
                "{ISOLATION_ANNOTATION}={other:?}: expected vm or namespaces"
            ))),
        }
    }

    /// The backend of an existing container: one stat of its state dir.
    pub fn of_container(store: &Store, id: &str) -> Backend {
        if store.dir(id).join(state::STATE_FILE).exists() {
            Backend::Vm
        } else {
            Backend::Namespaces
        }
    }
}
