//! The one place where `moat`'s container commands choose between the two backends of a
//! container that exists: the namespaces backend (`moat-container`) and the VM backend
//! (`moat_runtime::vm_backend`, a container created from a bundle annotated
//! `io.moat.isolation=vm`). Each function looks the backend up from the runtime store (one stat)
//! and calls the right one, so `ps`, `stop`, `kill`, `rm` and `exec` work the same on both.

use moat_container::state::Status;
use moat_container::Store;
use moat_runtime::vm_backend::{self, Backend};

use crate::error::{CliError, Result};

/// True when container `id` runs in its own VM.
pub fn is_vm(rt: &Store, id: &str) -> bool {
    Backend::of_container(rt, id) == Backend::Vm
}

/// The container's runtime status and pid (QEMU's for a VM container), when the runtime still
/// knows it.
pub fn state(rt: &Store, id: &str) -> Option<(Status, i32)> {
    if is_vm(rt, id) {
        let s = vm_backend::state(rt, id).ok()?;
        return Some((s.status, s.pid));
    }
    let st = rt.load(id).ok()?;
    Some((rt.status(&st), st.pid))
}

/// Send `signal` to the container's init (every process with `all`).
pub fn kill(rt: &Store, id: &str, name: &str, signal: i32, all: bool) -> Result<()> {
    if is_vm(rt, id) {
        return vm_backend::kill(rt, id, signal, all)
            .map_err(CliError::vm(format!("kill container {name}")));
    }
    moat_container::kill::kill(rt, id, signal, all)
        .map_err(CliError::container(format!("kill container {name}")))
}

/// Remove the container's runtime state, killing what still runs (a VM is powered off); a
/// container the runtime no longer knows is not an error.
pub fn delete(rt: &Store, id: &str, name: &str) -> Result<()> {
    if is_vm(rt, id) {
        return vm_backend::delete(rt, id, true)
            .map_err(CliError::vm(format!("delete container {name}")));
    }
    moat_container::delete::delete(rt, id, true)
        .or_else(|e| match e {
            moat_container::ContainerError::NotFound(_) => Ok(()),
            e => Err(e),
        })
        .map_err(CliError::container(format!("delete container {name}")))
}
