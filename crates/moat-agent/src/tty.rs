//! A container process's terminal in the guest. The namespaces backend opens the pty inside the
//! container (its devpts) and makes the slave the process's controlling terminal and stdio, as on
//! the host; it sends the master over a console socket, here the agent's end of a socketpair.
//! The agent then reads the master like an output pipe (everything comes as stdout: a terminal
//! has one stream), writes the host's stdin into it, and sets its size on the host's `Resize`.
//!
//! What it must never do: block the request loop on the master (it is non-blocking), or let a
//! container process inherit it (every copy is close-on-exec).

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

use crate::error::{AgentFailure, Result};

fn sys(what: &'static str) -> impl FnOnce(nix::errno::Errno) -> AgentFailure {
    move |errno| AgentFailure::Sys {
        what: what.into(),
        errno,
    }
}

/// Whether an OCI process (as JSON) asks for a terminal.
pub fn wants_terminal(process: &serde_json::Value) -> bool {
    process["terminal"].as_bool() == Some(true)
}

/// The console socket of one create or exec: `theirs` goes into the backend's options, the
/// master arrives on `ours` before the create (or exec) returns.
pub struct ConsoleChannel {
    ours: OwnedFd,
    pub theirs: Arc<OwnedFd>,
}

impl ConsoleChannel {
    pub fn new() -> Result<ConsoleChannel> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )
        .map_err(sys("create the console socketpair"))?;
        Ok(ConsoleChannel {
            ours,
            theirs: Arc::new(theirs),
        })
    }

    /// The pty master the container's process sent (queued by the time create/exec returned;
    /// the socket is non-blocking, so a missing master is an error, never a hang).
    pub fn receive_master(self, what: &str) -> Result<OwnedFd> {
        drop(self.theirs);
        let mut buf = [0u8; 4096];
        let (_, mut fds) =
            moat_sys::fd::recv_fds(self.ours.as_fd(), &mut buf).map_err(|errno| {
                AgentFailure::Sys {
                    what: format!("receive the pty master of {what}"),
                    errno,
                }
            })?;
        let master = fds
            .pop()
            .ok_or_else(|| AgentFailure::NotFound(format!("the pty master of {what}")))?;
        let flags = fcntl(master.as_raw_fd(), FcntlArg::F_GETFL).map_err(sys("F_GETFL"))?;
        fcntl(
            master.as_raw_fd(),
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
        )
        .map_err(sys("make the pty master non-blocking"))?;
        Ok(master)
    }
}

/// The agent's copies of one master: read as output, written as stdin, kept for resizes.
pub struct Master {
    pub output: File,
    pub input: File,
    pub control: File,
}

impl Master {
    pub fn split(master: OwnedFd) -> Result<Master> {
        let dup = |m: &OwnedFd| {
            m.try_clone()
                .map(File::from)
                .map_err(|e| AgentFailure::io("duplicate", "the pty master", e))
        };
        Ok(Master {
            output: dup(&master)?,
            input: dup(&master)?,
            control: File::from(master),
        })
    }
}

/// `TIOCSWINSZ` on a master.
pub fn resize(master: &File, width: u16, height: u16) -> Result<()> {
    let ws = nix::pty::Winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    moat_sys::fd::set_winsize(master.as_fd(), &ws).map_err(sys("set the terminal size"))
}
