//! Lending the agent's stdio to a container process. `moat-container` gives a container's init
//! (and an exec'd process) the stdio of its caller, so for the duration of one create or exec the
//! agent points its fds 0/1/2 at /dev/null and two pipes, then restores them. The request loop
//! polls the read ends and forwards what it reads to the host as output messages.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use moat_agent_proto::Stream;

use crate::error::{AgentFailure, Result};

/// The pipes of one process: our read ends, and the write ends while lent.
pub struct Pipes {
    pub out_r: OwnedFd,
    pub err_r: OwnedFd,
    out_w: OwnedFd,
    err_w: OwnedFd,
}

fn sys(what: &'static str) -> impl FnOnce(nix::errno::Errno) -> AgentFailure {
    move |errno| AgentFailure::Sys {
        what: what.into(),
        errno,
    }
}

impl Pipes {
    pub fn new() -> Result<Pipes> {
        let (out_r, out_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("pipe for stdout"))?;
        let (err_r, err_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("pipe for stderr"))?;
        Ok(Pipes {
            out_r,
            err_r,
            out_w,
            err_w,
        })
    }
}

/// Fds 0/1/2 lent out; restored on drop.
pub struct Lent {
    saved: [Option<OwnedFd>; 3],
}

/// Point fds 0/1/2 at /dev/null and the write ends of `p`.
pub fn lend(p: &Pipes) -> Result<Lent> {
    let null = File::open("/dev/null").map_err(|e| AgentFailure::io("open", "/dev/null", e))?;
    let saved = [
        std::io::stdin().as_fd().try_clone_to_owned().ok(),
        std::io::stdout().as_fd().try_clone_to_owned().ok(),
        std::io::stderr().as_fd().try_clone_to_owned().ok(),
    ];
    let lent = Lent { saved };
    nix::unistd::dup2(null.as_raw_fd(), 0).map_err(sys("dup2 /dev/null to stdin"))?;
    nix::unistd::dup2(p.out_w.as_raw_fd(), 1).map_err(sys("dup2 pipe to stdout"))?;
    nix::unistd::dup2(p.err_w.as_raw_fd(), 2).map_err(sys("dup2 pipe to stderr"))?;
    Ok(lent)
}

impl Drop for Lent {
    fn drop(&mut self) {
        for (i, s) in self.saved.iter().enumerate() {
            match s {
                Some(fd) => {
                    let _ = nix::unistd::dup2(fd.as_raw_fd(), i as i32);
                }
                None => {
                    let _ = nix::unistd::close(i as i32);
                }
            }
        }
    }
}

impl Pipes {
    /// Our read ends, after dropping the write ends (so EOF comes when the process and its
    /// children close theirs).
    pub fn into_readers(self) -> [(File, Stream); 2] {
        let Pipes {
            out_r,
            err_r,
            out_w,
            err_w,
        } = self;
        drop(out_w);
        drop(err_w);
        [
            (File::from(out_r), Stream::Stdout),
            (File::from(err_r), Stream::Stderr),
        ]
    }
}
