//! The reclaim helper of a VM container that `start` leaves with no moat process following it
//! (no terminal relay: what podman, Docker and containerd's runc shim get). A container followed
//! by a process of moat has that process give the sandbox's cold pages back while it idles
//! (`moat_vm::reclaim`); this one gets `moat-runtime vm-reclaim ID`, a small process in a session
//! of its own that runs the same loop and ends when QEMU does. It is registered beside the
//! terminal relays (`relays/<pid>`), so deleting the container makes sure it is gone.

use std::path::Path;
use std::process::{ExitCode, Stdio};

use moat_container::Store;

use super::state::{HostProc, VmState};

/// The hidden command of the helper.
pub const RECLAIM_COMMAND: &str = "vm-reclaim";

/// Start the helper for container `id` unless reclaim is off or a relay follows the container.
/// Failing to start it only costs memory: it is not an error of `start`.
pub(super) fn spawn_unless_followed(store: &Store, id: &str) {
    if !moat_vm::reclaim::enabled() {
        return;
    }
    let dir = store.dir(id).join("relays");
    if std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some()) {
        return;
    }
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    let mut cmd = super::terminal::helper_command(store, RECLAIM_COMMAND, id);
    cmd.current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // Never the target of the caller's terminal signals.
    moat_sys::process::new_session_on_spawn(&mut cmd);
    let Ok(child) = cmd.spawn() else {
        return;
    };
    register(&dir, child.id() as i32);
}

fn register(dir: &Path, pid: i32) {
    if let Some(p) = HostProc::of(pid) {
        let _ = std::fs::write(dir.join(pid.to_string()), p.start_time.to_string());
    }
}

/// `moat-runtime vm-reclaim ID`: the helper's body.
pub fn reclaim_main(store: &Store, id: &str) -> ExitCode {
    // It keeps none of its caller's descriptors (`--preserve-fds`, `LISTEN_FDS`, a client's
    // pipes): a helper living as long as the VM must not hold them open.
    let _ = moat_sys::process::close_from(3);
    match VmState::load(store, id) {
        Ok(st) => {
            moat_vm::reclaim::run(st.qemu_pid as u32, Some(st.qemu_start_time));
            ExitCode::SUCCESS
        }
        Err(_) => ExitCode::FAILURE,
    }
}
