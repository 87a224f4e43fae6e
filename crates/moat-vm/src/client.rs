//! The host's client of the agent protocol over the VM's agent socket. Requests are answered in
//! order; output and exit events that arrive meanwhile are queued for [`AgentClient::wait_exit`].
//! Every frame from the guest is decoded as hostile input: a bad frame is an error, never a panic.
//!
//! A VM has one or more agent ports, each serving one host connection at a time (QEMU's socket
//! chardev has one client). A command takes a port by an exclusive `flock` on the lock file next
//! to its socket ([`AgentClient::attach_any`]), held as long as the client lives, so concurrent
//! commands use different ports instead of queueing behind one another.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use moat_agent_proto::{
    encode, ContainerStats, Decoder, ExitStatus, GuestMessage, GuestProcess, HostMessage, Reply,
    Request, RootfsDisk, SharedMount, SharedRootfs, Stream, PROTOCOL_VERSION,
};

use crate::error::{Result, VmError};

/// How often [`AgentClient::reattach`] repeats its ping until answered.
pub const PING_RETRY: Duration = Duration::from_millis(300);

/// How long one request may take in the guest (a create under TCG takes a fraction of this).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The connection to one guest agent.
pub struct AgentClient {
    stream: UnixStream,
    dec: Decoder<GuestMessage>,
    next_id: u64,
    events: VecDeque<GuestMessage>,
    kernel_release: String,
    /// The port's lock, when taken.
    lock: Option<nix::fcntl::Flock<File>>,
}

/// Take the lock of the agent port whose socket is `sock`, without waiting; `None` when another
/// command holds it.
pub fn try_lock_port(sock: &Path) -> Result<Option<nix::fcntl::Flock<File>>> {
    let path = sock.with_extension("lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(VmError::io("open", &path))?;
    match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(Some(l)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(VmError::io("lock", &path)(e.into())),
    }
}

/// The connection's socket, to poll (read it with [`AgentClient::try_next_event`]).
impl std::os::fd::AsFd for AgentClient {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

/// The reading half of a split connection ([`AgentClient::split_reader`]).
pub struct AgentReader {
    stream: UnixStream,
    dec: Decoder<GuestMessage>,
    events: VecDeque<GuestMessage>,
}

impl AgentReader {
    /// The next message from the agent, waiting for it as long as it takes; an error once the
    /// connection is closed.
    pub fn next_message(&mut self) -> Result<GuestMessage> {
        if let Some(m) = self.events.pop_front() {
            return Ok(m);
        }
        read_message(&mut self.stream, &mut self.dec, None)
    }
}

/// Read one message from `stream` through `dec`, until `deadline` (`None`: no deadline).
fn read_message(
    stream: &mut UnixStream,
    dec: &mut Decoder<GuestMessage>,
    deadline: Option<Instant>,
) -> Result<GuestMessage> {
    let mut buf = [0u8; 64 * 1024];
    loop {
        if let Some(m) = dec.next_message() {
            return Ok(m?);
        }
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left.is_some_and(|l| l.is_zero()) {
            return Err(VmError::AgentTimeout { secs: 0 });
        }
        let _ = stream.set_read_timeout(left);
        match stream.read(&mut buf) {
            Ok(0) => return Err(VmError::Disconnected),
            Ok(n) => dec.push(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(VmError::AgentTimeout { secs: 0 })
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Err(VmError::Disconnected),
        }
    }
}

/// What a process wrote and how it ended.
#[derive(Debug, Clone)]
pub struct ProcessOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: ExitStatus,
}

impl AgentClient {
    fn over(stream: UnixStream) -> AgentClient {
        AgentClient {
            stream,
            dec: Decoder::new(),
            next_id: 1,
            events: VecDeque::new(),
            kernel_release: String::new(),
            lock: None,
        }
    }

    /// Take the agent's `Ready`: its protocol version must be ours.
    fn ready(&mut self, version: u32, kernel_release: String) -> Result<()> {
        if version != PROTOCOL_VERSION {
            return Err(VmError::ProtocolVersion {
                guest: version,
                host: PROTOCOL_VERSION,
            });
        }
        self.kernel_release = kernel_release;
        Ok(())
    }

    /// Wait for the agent's `Ready` and check its protocol version.
    pub fn handshake(stream: UnixStream, timeout: Duration) -> Result<AgentClient> {
        let mut c = AgentClient::over(stream);
        let deadline = Instant::now() + timeout;
        loop {
            match c.read_message(deadline)? {
                GuestMessage::Ready {
                    version,
                    kernel_release,
                } => {
                    c.ready(version, kernel_release)?;
                    return Ok(c);
                }
                other => c.events.push_back(other),
            }
        }
    }

    /// The first connection to a clone resumed from a template: send
    /// [`Request::Restored`] and wait for its answer. The guest resumed with the template's
    /// connection state, so a `Ready` may or may not come first; the request is repeated every
    /// [`PING_RETRY`] until answered (see [`AgentClient::reattach`] for why a first request can
    /// be lost), which is harmless: a second one is refused once the first made the clone
    /// unique, and the agent answers a repeat on a clone already made unique with `Done`.
    pub fn restored(
        stream: UnixStream,
        timeout: Duration,
        restore: moat_agent_proto::Restore,
    ) -> Result<AgentClient> {
        let mut c = AgentClient::over(stream);
        let deadline = Instant::now() + timeout;
        let mut ids = vec![c.send(Request::Restored(restore.clone()))?];
        let mut retry = Instant::now() + PING_RETRY;
        loop {
            let m = match c.read_message(retry.min(deadline)) {
                Ok(m) => m,
                Err(VmError::AgentTimeout { .. }) if Instant::now() < deadline => {
                    ids.push(c.send(Request::Restored(restore.clone()))?);
                    retry = Instant::now() + PING_RETRY;
                    continue;
                }
                Err(VmError::AgentTimeout { .. }) => {
                    return Err(VmError::AgentTimeout {
                        secs: timeout.as_secs(),
                    })
                }
                Err(e) => return Err(e),
            };
            match m {
                GuestMessage::Ready {
                    version,
                    kernel_release,
                } => c.ready(version, kernel_release)?,
                GuestMessage::Response { id, result } if ids.contains(&id) => {
                    // The first answer decides (a repeat's, if it comes later, is queued).
                    return match result {
                        Ok(_) => Ok(c),
                        Err(source) => Err(VmError::Agent {
                            request: "make the clone unique".into(),
                            source,
                        }),
                    };
                }
                other => c.events.push_back(other),
            }
        }
    }

    /// Connect again to the agent of a running VM (its socket `sock`): the agent answers a ping
    /// (the `Ready` it sends on every new connection is skipped).
    ///
    /// The ping is repeated every [`PING_RETRY`]: in the guest, a new connection's first bytes
    /// can arrive before the port's "host connected" event (data and control are separate
    /// virtqueues), so the agent may read the ping, fail to write its answer, see the port as
    /// closed and drop that answer; the next ping, once the event has arrived, is answered.
    pub fn reattach(sock: &std::path::Path, timeout: Duration) -> Result<AgentClient> {
        let stream =
            UnixStream::connect(sock).map_err(VmError::io("connect to agent socket", sock))?;
        let mut c = AgentClient::over(stream);
        let deadline = Instant::now() + timeout;
        let mut pings = Vec::new();
        loop {
            pings.push(c.send(Request::Ping)?);
            let retry = (Instant::now() + PING_RETRY).min(deadline);
            loop {
                match c.read_message(retry) {
                    Ok(GuestMessage::Ready { kernel_release, .. }) => {
                        c.kernel_release = kernel_release
                    }
                    Ok(GuestMessage::Response { id, .. }) if pings.contains(&id) => return Ok(c),
                    Ok(other) => c.events.push_back(other),
                    Err(VmError::AgentTimeout { .. }) if Instant::now() < deadline => break,
                    Err(VmError::AgentTimeout { .. }) => {
                        return Err(VmError::AgentTimeout {
                            secs: timeout.as_secs(),
                        })
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }

    /// Attach to a free port among `socks` (the agent sockets of one VM): take the first port
    /// whose lock is free and reattach there, retrying until `timeout` while all are taken.
    pub fn attach_any(socks: &[PathBuf], timeout: Duration) -> Result<AgentClient> {
        let deadline = Instant::now() + timeout;
        loop {
            for s in socks {
                if let Some(lock) = try_lock_port(s)? {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let mut c = Self::reattach(s, left.max(Duration::from_millis(100)))?;
                    c.lock = Some(lock);
                    return Ok(c);
                }
            }
            if Instant::now() > deadline {
                return Err(VmError::PortsBusy {
                    ports: socks.len(),
                    secs: timeout.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Hold `lock` (of this client's port) as long as the client lives.
    pub fn hold_lock(&mut self, lock: nix::fcntl::Flock<File>) {
        self.lock = Some(lock);
    }

    /// The next output or exit event (queued or read within `timeout`); `None` on timeout.
    pub fn next_event(&mut self, timeout: Duration) -> Result<Option<GuestMessage>> {
        if let Some(m) = self.events.pop_front() {
            return Ok(Some(m));
        }
        match self.read_message(Instant::now() + timeout) {
            Ok(m) => Ok(Some(m)),
            Err(VmError::AgentTimeout { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A message received already, or one the socket has ready, without waiting (`None`: nothing
    /// yet). With [`AsFd`], for a caller that polls the connection with other descriptors.
    pub fn try_next_event(&mut self) -> Result<Option<GuestMessage>> {
        use std::os::fd::AsRawFd;
        if let Some(m) = self.events.pop_front() {
            return Ok(Some(m));
        }
        let mut buf = [0u8; 64 * 1024];
        loop {
            if let Some(m) = self.dec.next_message() {
                return Ok(Some(m?));
            }
            match nix::sys::socket::recv(
                self.stream.as_raw_fd(),
                &mut buf,
                nix::sys::socket::MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(0) => return Err(VmError::Disconnected),
                Ok(n) => self.dec.push(&buf[..n]),
                Err(nix::errno::Errno::EAGAIN) => return Ok(None),
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return Err(VmError::Disconnected),
            }
        }
    }

    /// The guest kernel's release, as the agent reported it.
    pub fn kernel_release(&self) -> &str {
        &self.kernel_release
    }

    fn read_message(&mut self, deadline: Instant) -> Result<GuestMessage> {
        read_message(&mut self.stream, &mut self.dec, Some(deadline))
    }

    /// Split the connection: the returned reader gets everything the agent sends from now on
    /// (with what was received and not consumed yet), this client only sends ([`Self::send`];
    /// its request-and-wait methods must not be used any more). For a caller with one reading
    /// thread that blocks on the socket, instead of waking up to let senders in.
    pub fn split_reader(&mut self) -> Result<AgentReader> {
        let stream = self.stream.try_clone().map_err(|_| VmError::Disconnected)?;
        Ok(AgentReader {
            stream,
            dec: std::mem::take(&mut self.dec),
            events: std::mem::take(&mut self.events),
        })
    }

    /// Write raw bytes to the agent (a frame built by the caller, e.g. to check that the agent
    /// survives a malformed one).
    pub fn send_frame_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream
            .write_all(bytes)
            .map_err(|_| VmError::Disconnected)
    }

    /// Send `request` without waiting: its response arrives later as a
    /// [`GuestMessage::Response`] with the returned id (from [`AgentClient::next_event`]).
    pub fn send(&mut self, request: Request) -> Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let frame = encode(&HostMessage { id, request })?;
        self.send_frame_bytes(&frame)?;
        Ok(id)
    }

    /// Send `request` and wait for its response. Other messages (output, exits, responses to
    /// frames the agent could not decode, with id 0) are queued.
    pub fn request(&mut self, request: Request) -> Result<Reply> {
        let what = request.describe();
        let id = self.send(request)?;
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            let m = self.read_message(deadline).map_err(|e| match e {
                VmError::AgentTimeout { .. } => VmError::AgentTimeout {
                    secs: REQUEST_TIMEOUT.as_secs(),
                },
                e => e,
            })?;
            match m {
                GuestMessage::Response { id: rid, result } if rid == id => {
                    return result.map_err(|source| VmError::Agent {
                        request: what,
                        source,
                    })
                }
                other => self.events.push_back(other),
            }
        }
    }

    pub fn ping(&mut self) -> Result<()> {
        expect_done(self.request(Request::Ping)?, "ping", Reply::Pong)
    }

    /// Create a container (its init's stdin is /dev/null); returns its init's guest pid.
    pub fn create(&mut self, id: &str, config_json: &str, rootfs: RootfsDisk) -> Result<i32> {
        self.create_with(id, config_json, rootfs, false, vec![], vec![])
    }

    /// Create a container whose init has a stdin pipe (`stdin`, fed with
    /// [`Request::Stdin`]), whose bind mounts `shared` come from the VM's shared directory and
    /// `files` with the request.
    pub fn create_with(
        &mut self,
        id: &str,
        config_json: &str,
        rootfs: RootfsDisk,
        stdin: bool,
        shared: Vec<SharedMount>,
        files: Vec<moat_agent_proto::InlineFile>,
    ) -> Result<i32> {
        let r = self.request(Request::Create {
            container_id: id.into(),
            config_json: config_json.into(),
            rootfs,
            stdin,
            shared,
            files,
        })?;
        pid_of(r, "create")
    }

    /// Create a container whose root filesystem the host placed in the VM's shared directory
    /// (a pod VM); returns its init's guest pid.
    pub fn create_shared(
        &mut self,
        id: &str,
        config_json: &str,
        rootfs: SharedRootfs,
        stdin: bool,
        shared: Vec<SharedMount>,
    ) -> Result<i32> {
        let r = self.request(Request::CreateShared {
            container_id: id.into(),
            config_json: config_json.into(),
            rootfs,
            stdin,
            shared,
        })?;
        pid_of(r, "create")
    }

    pub fn start(&mut self, id: &str) -> Result<()> {
        let r = self.request(Request::Start {
            container_id: id.into(),
        })?;
        expect_done(r, "start", Reply::Done)
    }

    /// Run `process_json` (an OCI process) in container `id`; returns its guest pid. With
    /// `stdin`, the process reads what [`Request::Stdin`] sends (else /dev/null).
    pub fn exec(
        &mut self,
        id: &str,
        exec_id: &str,
        process_json: &str,
        stdin: bool,
    ) -> Result<i32> {
        let r = self.request(Request::Exec {
            container_id: id.into(),
            exec_id: exec_id.into(),
            process_json: process_json.into(),
            stdin,
        })?;
        pid_of(r, "exec")
    }

    /// Give the guest the interfaces (found by MAC), addresses, MTU and routes of the network
    /// namespace the VM joined ([`crate::net::attach`]); brings the guest's `lo` up.
    pub fn configure_network(
        &mut self,
        interfaces: Vec<moat_agent_proto::NetInterface>,
        routes: Vec<moat_agent_proto::NetRoute>,
    ) -> Result<()> {
        let r = self.request(Request::Network { interfaces, routes })?;
        expect_done(r, "network", Reply::Done)
    }

    pub fn pause(&mut self, id: &str) -> Result<()> {
        let r = self.request(Request::Pause {
            container_id: id.into(),
        })?;
        expect_done(r, "pause", Reply::Done)
    }

    pub fn resume(&mut self, id: &str) -> Result<()> {
        let r = self.request(Request::Resume {
            container_id: id.into(),
        })?;
        expect_done(r, "resume", Reply::Done)
    }

    /// Resource usage of container `id` in the guest.
    pub fn stats(&mut self, id: &str) -> Result<ContainerStats> {
        match self.request(Request::Stats {
            container_id: id.into(),
        })? {
            Reply::Stats(s) => Ok(s),
            other => Err(VmError::UnexpectedReply {
                request: "stats".into(),
                reply: format!("{other:?}"),
            }),
        }
    }

    /// The processes of container `id` (guest pids).
    pub fn processes(&mut self, id: &str) -> Result<Vec<GuestProcess>> {
        match self.request(Request::Processes {
            container_id: id.into(),
        })? {
            Reply::Processes(p) => Ok(p),
            other => Err(VmError::UnexpectedReply {
                request: "processes".into(),
                reply: format!("{other:?}"),
            }),
        }
    }

    pub fn kill(&mut self, id: &str, exec_id: Option<&str>, signal: i32, all: bool) -> Result<()> {
        let r = self.request(Request::Kill {
            container_id: id.into(),
            exec_id: exec_id.map(String::from),
            signal,
            all,
        })?;
        expect_done(r, "kill", Reply::Done)
    }

    pub fn delete(&mut self, id: &str, force: bool) -> Result<()> {
        let r = self.request(Request::Delete {
            container_id: id.into(),
            force,
        })?;
        expect_done(r, "delete", Reply::Done)
    }

    /// Ask the agent to end the sandbox (it answers, then powers the VM off).
    pub fn shutdown(&mut self) -> Result<()> {
        let r = self.request(Request::Shutdown)?;
        expect_done(r, "shutdown", Reply::Done)
    }

    /// Messages received but not consumed yet.
    pub fn pending(&self) -> impl Iterator<Item = &GuestMessage> {
        self.events.iter()
    }

    /// Collect the output of container `id`'s init (or of exec `exec_id`) until it exits.
    pub fn wait_exit(
        &mut self,
        id: &str,
        exec_id: Option<&str>,
        timeout: Duration,
    ) -> Result<ProcessOutput> {
        let deadline = Instant::now() + timeout;
        let mut out = ProcessOutput {
            stdout: vec![],
            stderr: vec![],
            status: ExitStatus::Code(-1),
        };
        let mine = |c: &str, e: &Option<String>| c == id && e.as_deref() == exec_id;
        let mut others = VecDeque::new();
        let result = loop {
            let m = match self.events.pop_front() {
                Some(m) => m,
                None => match self.read_message(deadline) {
                    Ok(m) => m,
                    Err(e) => break Err(e),
                },
            };
            match m {
                GuestMessage::Output {
                    container_id,
                    exec_id: e,
                    stream,
                    data,
                } if mine(&container_id, &e) => match stream {
                    Stream::Stdout => out.stdout.extend(data),
                    Stream::Stderr => out.stderr.extend(data),
                },
                GuestMessage::Exited {
                    container_id,
                    exec_id: e,
                    status,
                } if mine(&container_id, &e) => {
                    out.status = status;
                    break Ok(out);
                }
                other => others.push_back(other),
            }
        };
        others.append(&mut self.events);
        self.events = others;
        result
    }
}

fn expect_done(r: Reply, what: &str, want: Reply) -> Result<()> {
    if r == want {
        Ok(())
    } else {
        Err(VmError::UnexpectedReply {
            request: what.into(),
            reply: format!("{r:?}"),
        })
    }
}

fn pid_of(r: Reply, what: &str) -> Result<i32> {
    match r {
        Reply::Pid(p) => Ok(p),
        other => Err(VmError::UnexpectedReply {
            request: what.into(),
            reply: format!("{other:?}"),
        }),
    }
}
