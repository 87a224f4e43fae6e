//! `start`: release a created container's init from the exec fifo so it executes the user's
//! program, then run the poststart hooks (a failing one stops the container and fails `start`).

use std::os::fd::AsFd;
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::stat::Mode;

use crate::error::{ContainerError, Result};
use crate::state::{init_alive, Status, Store};

pub fn start(store: &Store, id: &str) -> Result<()> {
    let _lock = store.lock(id)?;
    let st = store.load(id)?;
    let status = store.status(&st);
    if status != Status::Created {
        return Err(ContainerError::BadStatus {
            id: id.into(),
            action: "start",
            status: status.to_string(),
        });
    }
    let fifo_path = store.fifo(id);
    let fifo = nix::fcntl::open(
        &fifo_path,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map(moat_sys::fd::owned)
    .map_err(crate::error::sys(format!(
        "open exec fifo {}",
        fifo_path.display()
    )))?;
    // The init opens the fifo for writing once it sees a reader and writes one byte; its write
    // end closes on execve (close-on-exec), so EOF after the byte means the user's program runs.
    let mut got_byte = false;
    loop {
        let mut fds = [PollFd::new(fifo.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(100u16)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => {}
            Ok(_) => {
                let mut b = [0u8; 16];
                match nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&fifo), &mut b) {
                    Ok(0) if got_byte => break,
                    Ok(0) => {
                        // No writer yet (or it closed without writing): wait a little.
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Ok(_) => got_byte = true,
                    Err(nix::errno::Errno::EAGAIN) => {}
                    Err(e) => {
                        return Err(ContainerError::Sys {
                            what: format!("read exec fifo {}", fifo_path.display()),
                            errno: e,
                        })
                    }
                }
            }
            Err(e) => {
                return Err(ContainerError::Sys {
                    what: format!("poll exec fifo {}", fifo_path.display()),
                    errno: e,
                })
            }
        }
        if !init_alive(&st) {
            if got_byte {
                break;
            }
            return Err(ContainerError::BadStatus {
                id: id.into(),
                action: "start",
                status: "stopped (the init exited before start)".into(),
            });
        }
    }
    let _ = std::fs::remove_file(&fifo_path);
    let mut oci = store.oci_state(&st);
    oci.status = Status::Running;
    let state = serde_json::to_string(&oci).unwrap_or_default();
    // A failing poststart hook fails `start` and stops the container, as runc does: the caller
    // sees a non-zero exit and a stopped container it can delete.
    if let Err(e) = crate::hooks::run_all(
        "poststart",
        st.hooks.as_ref().and_then(|h| h.poststart().as_ref()),
        &state,
    ) {
        crate::kill::kill_and_wait(&st);
        return Err(e);
    }
    Ok(())
}
