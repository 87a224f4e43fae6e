//! Lending the agent's stdio to a container process. `moat-container` gives a container's init
//! (and an exec'd process) the stdio of its caller, so for the duration of one create or exec the
//! agent points its fds 0/1/2 at /dev/null (or a stdin pipe, when the host forwards stdin) and
//! two pipes, then restores them. The request loop polls the read ends and forwards what it
//! reads to the host as output messages, and writes what the host sends into the stdin pipe.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use moat_agent_proto::Stream;

use crate::error::{AgentFailure, Result};

/// The pipes of one process: our read ends, and the write ends while lent; with a stdin pipe,
/// our write end and its read end while lent.
pub struct Pipes {
    pub out_r: OwnedFd,
    pub err_r: OwnedFd,
    out_w: OwnedFd,
    err_w: OwnedFd,
    stdin: Option<(OwnedFd, OwnedFd)>,
}

fn sys(what: &'static str) -> impl FnOnce(nix::errno::Errno) -> AgentFailure {
    move |errno| AgentFailure::Sys {
        what: what.into(),
        errno,
    }
}

impl Pipes {
    /// Output pipes, and a stdin pipe when `stdin`.
    pub fn new(stdin: bool) -> Result<Pipes> {
        let (out_r, out_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("pipe for stdout"))?;
        let (err_r, err_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("pipe for stderr"))?;
        let stdin = if stdin {
            let (r, w) =
                nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("pipe for stdin"))?;
            Some((r, w))
        } else {
            None
        };
        Ok(Pipes {
            out_r,
            err_r,
            out_w,
            err_w,
            stdin,
        })
    }
}

/// Our read ends of stdout and stderr.
pub type Readers = [(File, Stream); 2];

/// Fds 0/1/2 lent out; restored on drop.
pub struct Lent {
    saved: [Option<OwnedFd>; 3],
}

/// Point fds 0/1/2 at /dev/null (or the read end of the stdin pipe) and the write ends of `p`.
pub fn lend(p: &Pipes) -> Result<Lent> {
    let null = File::open("/dev/null").map_err(|e| AgentFailure::io("open", "/dev/null", e))?;
    let lent = save();
    match &p.stdin {
        Some((r, _)) => nix::unistd::dup2(r.as_raw_fd(), 0).map_err(sys("dup2 pipe to stdin"))?,
        None => nix::unistd::dup2(null.as_raw_fd(), 0).map_err(sys("dup2 /dev/null to stdin"))?,
    };
    nix::unistd::dup2(p.out_w.as_raw_fd(), 1).map_err(sys("dup2 pipe to stdout"))?;
    nix::unistd::dup2(p.err_w.as_raw_fd(), 2).map_err(sys("dup2 pipe to stderr"))?;
    Ok(lent)
}

/// Point fds 0/1/2 at /dev/null: a process with a terminal gets the pty slave as its stdio from
/// the namespaces backend, and nothing of ours must stay open in it.
pub fn lend_null() -> Result<Lent> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| AgentFailure::io("open", "/dev/null", e))?;
    let lent = save();
    for fd in 0..=2 {
        nix::unistd::dup2(null.as_raw_fd(), fd).map_err(sys("dup2 /dev/null to stdio"))?;
    }
    Ok(lent)
}

fn save() -> Lent {
    Lent {
        saved: [
            std::io::stdin().as_fd().try_clone_to_owned().ok(),
            std::io::stdout().as_fd().try_clone_to_owned().ok(),
            std::io::stderr().as_fd().try_clone_to_owned().ok(),
        ],
    }
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
    /// children close theirs), and the non-blocking write end of the stdin pipe.
    pub fn into_ends(self) -> Result<(Readers, Option<File>)> {
        let Pipes {
            out_r,
            err_r,
            out_w,
            err_w,
            stdin,
        } = self;
        drop(out_w);
        drop(err_w);
        let stdin = match stdin {
            Some((r, w)) => {
                drop(r);
                nix::fcntl::fcntl(
                    w.as_raw_fd(),
                    nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
                )
                .map_err(sys("make the stdin pipe non-blocking"))?;
                Some(File::from(w))
            }
            None => None,
        };
        Ok((
            [
                (File::from(out_r), Stream::Stdout),
                (File::from(err_r), Stream::Stderr),
            ],
            stdin,
        ))
    }
}
