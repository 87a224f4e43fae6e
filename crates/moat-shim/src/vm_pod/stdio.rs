//! Stdio of a pod VM's process: containerd's fifos on the host side, the agent's output events
//! and paced stdin requests on the guest side. Output is written by the agent link's reader; stdin
//! is read from its fifo by a thread per process that sends 16 KiB `Stdin` requests, one at a
//! time (the agent answers once the bytes are in the process's pipe), and `CloseStdin` at EOF.

use std::fs::File;
use std::io::Read;
use std::sync::Arc;

use moat_agent_proto::Request;

use super::error::{Result, VmPodError};
use super::link::Link;

/// The host ends of a process's stdio.
pub struct Fifos {
    pub out: File,
    pub err: File,
    /// The stdin fifo, when containerd gave one.
    pub stdin: Option<File>,
}

/// Open the fifos containerd created for a process (empty paths: /dev/null).
pub fn open(id: &str, stdin: &str, stdout: &str, stderr: &str) -> Result<Fifos> {
    let [i, o, e] =
        crate::io::open_stdio(stdin, stdout, stderr).map_err(|source| VmPodError::Io {
            what: "open the stdio fifos of",
            path: id.into(),
            source,
        })?;
    Ok(Fifos {
        out: File::from(o),
        err: File::from(e),
        stdin: (!stdin.is_empty()).then(|| File::from(i)),
    })
}

/// Wait until `fifo` can be read: data, or EOF once a writer has come and gone. (A read on a
/// fifo whose writer has not opened it yet returns EOF at once; `poll` waits for the writer.)
fn readable(fifo: &File) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    loop {
        let mut fds = [PollFd::new(fifo.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => return true,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return false,
        }
    }
}

/// Forward `fifo` to the stdin of container `cid`'s init (or of exec `eid`) until EOF.
pub fn forward(link: Arc<Link>, cid: String, eid: Option<String>, mut fifo: File) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if !readable(&fifo) {
                break;
            }
            let n = match fifo.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => 0,
            };
            if n == 0 {
                break;
            }
            let sent = link.done(Request::Stdin {
                container_id: cid.clone(),
                exec_id: eid.clone(),
                data: buf[..n].to_vec(),
            });
            if sent.is_err() {
                // The process closed its stdin or exited.
                return;
            }
        }
        let _ = link.done(Request::CloseStdin {
            container_id: cid,
            exec_id: eid,
        });
    });
}
