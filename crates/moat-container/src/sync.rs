//! The create protocol between the runtime (parent) and the container's init (child): typed
//! messages, one per `SOCK_SEQPACKET` datagram, encoded as JSON. The child reports failures as
//! [`InitFailure`] so the parent can name the exact step; an EOF means the other side died.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::InitFailure;

/// Parent → init.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToInit {
    /// The init is in its cgroup (and has its id maps if its user namespace came from clone3): go on.
    Start,
    /// Go on with what does not depend on the cgroup (namespaces but the cgroup one, the spec's
    /// mounts up to a cgroup mount); [`ToInit::Placed`] follows once the runtime has moved the
    /// init into its cgroup. Only sent when no id maps are needed and no second fork is made.
    StartEarly,
    /// After [`ToInit::StartEarly`]: the init is in its cgroup now.
    Placed,
    /// uid_map/gid_map of the new user namespace are written.
    MapsWritten,
    /// prestart/createRuntime hooks ran; the state JSON to hand to createContainer hooks.
    HooksDone { state: String },
    /// What to send to the seccomp listener with the notify descriptor (the OCI
    /// `ContainerProcessState` JSON).
    ListenerMessage { json: String },
}

/// Init → parent.
#[derive(Debug, Serialize, Deserialize)]
pub enum FromInit {
    /// The process `pid` (host pid) has a new user namespace that needs its id maps.
    NeedMaps {
        pid: i32,
    },
    /// Stage 1 forked the real init (host pid) and is exiting.
    InitPid {
        pid: i32,
    },
    /// The mounts are in place: run prestart and createRuntime hooks now (only sent when the spec
    /// has hooks of the create phase, see `hooks::any_during_create`).
    RunHooks,
    /// The filter has notify rules: send [`ToInit::ListenerMessage`]. The init sends it with the
    /// listener descriptor over the connection to listenerPath that the runtime made, right
    /// after installing the filter, just before `execve`.
    NeedListenerMessage,
    /// Setup is complete; the init now waits on the exec fifo.
    Ready,
    Failed(InitFailure),
}

/// One end of the sync socket.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

/// A connected pair: (parent end, child end).
pub fn pair() -> nix::Result<(Channel, Channel)> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    Ok((Channel { fd: a }, Channel { fd: b }))
}

impl Channel {
    pub fn send<T: Serialize>(&self, msg: &T) -> nix::Result<()> {
        let data = serde_json::to_vec(msg).map_err(|_| nix::errno::Errno::EINVAL)?;
        loop {
            match nix::sys::socket::send(
                self.fd.as_raw_fd(),
                &data,
                nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
            ) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => return r.map(|_| ()),
            }
        }
    }

    /// Send a message with one descriptor attached.
    pub fn send_fd<T: Serialize>(
        &self,
        msg: &T,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> nix::Result<()> {
        let data = serde_json::to_vec(msg).map_err(|_| nix::errno::Errno::EINVAL)?;
        moat_sys::fd::send_fds(self.fd.as_fd(), &data, &[fd.as_raw_fd()])
    }

    /// Receive one message and any descriptors attached; `Ok(None)` on EOF.
    pub fn recv_with_fds<T: DeserializeOwned>(&self) -> nix::Result<Option<(T, Vec<OwnedFd>)>> {
        let mut buf = vec![0u8; 64 * 1024];
        let (n, fds) = loop {
            match moat_sys::fd::recv_fds(self.fd.as_fd(), &mut buf) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => break r?,
            }
        };
        if n == 0 {
            return Ok(None);
        }
        serde_json::from_slice(&buf[..n])
            .map(|m| Some((m, fds)))
            .map_err(|_| nix::errno::Errno::EBADMSG)
    }

    /// Receive one message; `Ok(None)` on EOF (the peer exited).
    pub fn recv<T: DeserializeOwned>(&self) -> nix::Result<Option<T>> {
        let mut buf = vec![0u8; 64 * 1024];
        let n = loop {
            match nix::sys::socket::recv(
                self.fd.as_raw_fd(),
                &mut buf,
                nix::sys::socket::MsgFlags::empty(),
            ) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => break r?,
            }
        };
        if n == 0 {
            return Ok(None);
        }
        serde_json::from_slice(&buf[..n])
            .map(Some)
            .map_err(|_| nix::errno::Errno::EBADMSG)
    }

    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
