//! `delete`: free everything a container holds: its processes (with `--force`), its cgroup (and
//! any nested cgroup it made), its state directory; then run the poststop hooks. Works for a
//! container whose init already died and for one whose `create` was killed half-way.

use std::time::{Duration, Instant};

use crate::error::{ContainerError, Result};
use crate::state::{Status, Store};

pub fn delete(store: &Store, id: &str, force: bool) -> Result<()> {
    crate::state::validate_id(id)?;
    let lock = match store.lock(id) {
        Ok(l) => l,
        Err(ContainerError::NotFound(_)) => {
            // A directory without a lock or state (create killed before writing them): remove it.
            let dir = store.dir(id);
            if dir.exists() {
                store.remove(id)?;
                return Ok(());
            }
            return if force {
                Ok(())
            } else {
                Err(ContainerError::NotFound(id.into()))
            };
        }
        Err(e) => return Err(e),
    };
    let st = match store.load(id) {
        Ok(st) => st,
        Err(ContainerError::NotFound(_)) => {
            store.remove(id)?;
            drop(lock);
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let status = store.status(&st);
    match status {
        Status::Stopped => {}
        // A created container can be deleted without --force (runc does the same).
        Status::Created => kill_and_wait(&st)?,
        _ if force => kill_and_wait(&st)?,
        _ => {
            return Err(ContainerError::BadStatus {
                id: id.into(),
                action: "delete without --force",
                status: status.to_string(),
            })
        }
    }
    if let Some(cg) = &st.cgroup {
        // Kills what outlived the init (e.g. without a pid namespace), then removes the cgroup.
        cg.destroy()?;
    }
    store.remove(id)?;
    drop(lock);
    let mut oci = store.oci_state(&st);
    oci.status = Status::Stopped;
    oci.pid = 0;
    let state = serde_json::to_string(&oci).unwrap_or_default();
    if let Err(e) = crate::hooks::run_all(
        "poststop",
        st.hooks.as_ref().and_then(|h| h.poststop().as_ref()),
        &state,
    ) {
        eprintln!("warning: {e}");
    }
    Ok(())
}

fn kill_and_wait(st: &crate::state::StateFile) -> Result<()> {
    if crate::state::init_alive(st) {
        let _ = crate::kill::signal_init(st, libc::SIGKILL);
    }
    if let Some(cg) = &st.cgroup {
        // Freezes first so that nothing forks past the signal (moat-cgroups owns this).
        let _ = cg.kill_all(libc::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while crate::state::init_alive(st) {
        if Instant::now() > deadline {
            return Err(ContainerError::Sys {
                what: format!(
                    "container {} init {} did not die after SIGKILL",
                    st.id, st.pid
                ),
                errno: nix::errno::Errno::ETIMEDOUT,
            });
        }
        // Reap it if it is our child (run); otherwise its parent or subreaper does.
        let _ = nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(st.pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}
