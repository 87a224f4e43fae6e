//! The request loop: one thread, one `poll(2)` over the agent's ports, the containers' pipes and
//! their processes (pidfds), and a non-blocking reap of exited children on every turn. It sleeps
//! until something happens: a port whose host is not connected reports a hangup at once to
//! `poll`, so the ports are also in an edge-triggered epoll that wakes the loop when a host
//! connects (virtio-console wakes the port's waiters on `PORT_OPEN`); the only timers are an
//! exit's [`EOF_GRACE`] and, for a container whose cgroup cannot be watched, the OOM counters'
//! [`moat_cgroups::oom::OOM_POLL`]. An idle
//! guest used to wake every 20 ms for all of this, which kept its kernel's tick and QEMU busy
//! (6.5% of a host core per idle sandbox under TCG). Single-threaded on purpose:
//! `moat-container` forks with clone3 and refuses (EBUSY) to do so from a multi-threaded process,
//! since the child runs Rust code that could meet a lock held by another thread.
//!
//! The agent serves every port the host gave it ([`Conn`]), each one host connection at a time.
//! A request is answered on the connection it came from; a process's output and exit go to the
//! connection that started it (`Start`, `Exec`) and are dropped while that one is not connected.
//! When that connection goes, the process's stdin is closed (the host stopped forwarding it).
//! In a `moat.sandbox=single` guest a disconnect is normal (each runtime command is one
//! connection) and the VM powers off once the container's init has exited; otherwise the host
//! closing the first port ends the sandbox.
//!
//! A process whose OCI process asks for a terminal gets a pty opened in its container (`tty`):
//! its master is read as the process's stdout, written as its stdin and resized on `Resize`; a
//! host relay that outlives its command claims a process's events with `Attach`.
//!
//! A `Stdin` request is answered once its bytes are in the process's pipe (the pipe is polled
//! for writing meanwhile), which paces the host without the agent buffering more than a chunk.
//! OOM kills in a container's cgroup go to every connected host as `Oom` (`oom.rs`).

mod oom;
mod requests;

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use moat_agent_proto::{
    AgentError, DecodeError, ErrorCode, ExitStatus, GuestMessage, HostMessage, Reply, Request,
    Stream,
};
use moat_container::Store;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::conn::Conn;
use crate::error::{AgentFailure, Result};
use crate::log;
use crate::stdin::{Pumped, StdinPipe};

/// A container id and, for an exec'd process, its exec id.
pub type Key = (String, Option<String>);

struct Proc {
    pid: i32,
    /// Readable once the process has exited (`None`: pidfd_open failed; the next turn reaps).
    pidfd: Option<std::os::fd::OwnedFd>,
    open_pipes: u8,
    status: Option<(ExitStatus, Instant)>,
}

struct Pipe {
    file: File,
    key: Key,
    stream: Stream,
}

struct Agent {
    /// One per port, in port order; the first is the one `moat-vm` boots with.
    conns: Vec<Conn>,
    kernel_release: String,
    /// `moat.sandbox=single` on the kernel command line: the host may disconnect and come back
    /// (each runtime command is a new connection), and the VM powers off once the container's
    /// init has exited. Otherwise the host closing the first port ends the sandbox.
    single: bool,
    /// Cold boot, template or clone (`restore.rs`).
    phase: crate::restore::Phase,
    init_exited: bool,
    store: Store,
    bundles: HashMap<String, PathBuf>,
    procs: HashMap<Key, Proc>,
    /// The connection that started each process: where its output and exit go.
    owners: HashMap<Key, usize>,
    pipes: Vec<Pipe>,
    stdins: HashMap<Key, StdinPipe>,
    /// The pty masters of the processes that have a terminal (`tty`), for `Resize`.
    ttys: HashMap<Key, File>,
    /// The host's shared directory is mounted at [`crate::shared::SHARE_MOUNT`].
    share_mounted: bool,
    /// The init of the pod's shared pid namespace, once a container asked for it
    /// ([`moat_agent_proto::POD_PID_NS`]).
    pod_pid_ns: Option<i32>,
    /// The started containers' OOM-kill counters.
    ooms: moat_cgroups::oom::OomWatch,
    /// Every port, edge-triggered: readable when a port's state changes (a host connects).
    port_events: nix::sys::epoll::Epoll,
}

const BUNDLES: &str = "/run/moat-agent/bundles";
/// How long an exit waits for the process's pipes to close (a daemon may hold them open).
const EOF_GRACE: Duration = Duration::from_millis(500);
/// The pid recorded for a connection of [`Request::Dial`] (no process has it).
const FORWARD_PID: i32 = -1;
/// How long `flush_all` waits for a port at a time.
const TICK_MS: u16 = 20;
/// The longest the loop sleeps: a safety net, should an event ever be missed.
const SLEEP_MAX: Duration = Duration::from_secs(5);
/// Above this many unsent bytes the output pipes are not read (back-pressure on containers).
const OUT_LIMIT: usize = 4 << 20;

/// What one poll found ready.
struct Ready {
    /// Per connection: its events (empty while not connected).
    conns: Vec<PollFlags>,
    /// Indexes into `pipes`.
    pipes: Vec<usize>,
    /// A watched `memory.events` changed (read the OOM counters now).
    oom: bool,
}

pub fn serve(ports: &[PathBuf]) -> Result<()> {
    let conns = ports
        .iter()
        .map(|p| Conn::open(p))
        .collect::<Result<Vec<_>>>()?;
    use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
    let port_events =
        Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(|errno| AgentFailure::Sys {
            what: "epoll_create".into(),
            errno,
        })?;
    for (i, c) in conns.iter().enumerate() {
        let ev = EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT | EpollFlags::EPOLLET;
        port_events
            .add(&c.port, EpollEvent::new(ev, i as u64))
            .map_err(|errno| AgentFailure::Sys {
                what: format!("watch port {i}"),
                errno,
            })?;
    }
    let single = std::fs::read_to_string("/proc/cmdline")
        .unwrap_or_default()
        .split_whitespace()
        .any(|w| w == moat_agent_proto::SINGLE_SANDBOX_FLAG);
    let mut agent = Agent {
        conns,
        kernel_release: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        single,
        phase: crate::restore::Phase::from_cmdline(),
        init_exited: false,
        store: Store::new("/run/moat"),
        bundles: HashMap::new(),
        procs: HashMap::new(),
        owners: HashMap::new(),
        pipes: Vec::new(),
        stdins: HashMap::new(),
        ttys: HashMap::new(),
        share_mounted: false,
        pod_pid_ns: None,
        ooms: moat_cgroups::oom::OomWatch::new(),
        port_events,
    };
    agent.run();
    Ok(())
}

impl Agent {
    /// Queue `msg` for connection `conn` (dropped while it is not connected).
    fn send_to(&mut self, conn: usize, msg: &GuestMessage) {
        if let Some(c) = self.conns.get_mut(conn) {
            c.send(msg);
        }
    }

    /// Queue an event of process `key` for the connection that started it.
    fn send_event(&mut self, key: &Key, msg: &GuestMessage) {
        if let Some(&c) = self.owners.get(key) {
            self.send_to(c, msg);
        }
    }

    fn queued(&self) -> usize {
        self.conns.iter().map(Conn::queued).sum()
    }

    /// Flush for up to `limit` (before powering off).
    fn flush_all(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let mut fds: Vec<PollFd> = self
                .conns
                .iter()
                .filter(|c| c.connected() && c.queued() > 0)
                .map(|c| PollFd::new(c.port.as_fd(), PollFlags::POLLOUT))
                .collect();
            if fds.is_empty() || Instant::now() >= deadline {
                return;
            }
            let _ = poll(&mut fds, PollTimeout::from(TICK_MS));
            for c in &mut self.conns {
                c.flush();
            }
        }
    }

    fn run(&mut self) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let ready = match self.wait_ready() {
                Ok(r) => r,
                Err(e) => {
                    log::error(&format!("poll: {e}"));
                    return;
                }
            };
            let oom = ready.oom;
            for i in ready.pipes.into_iter().rev() {
                self.drain_pipe(i, &mut buf);
            }
            for (i, events) in ready.conns.into_iter().enumerate() {
                // While disconnected, probe the port every turn (poll reports HUP at once).
                if self.conns[i].connected() && events.is_empty() {
                    continue;
                }
                let got = self.conns[i].receive(&mut buf, &self.kernel_release);
                if got.disconnected {
                    // A saved template's port 0 closes while the host saves it, and a
                    // clone's before its host connects: neither ends the sandbox.
                    let saved = self.phase == crate::restore::Phase::Saved;
                    if !self.single && i == 0 && !saved {
                        log::info("host closed the port; shutting down");
                        self.shutdown();
                        return;
                    }
                    self.on_disconnect(i);
                }
                for m in got.messages {
                    if self.dispatch(i, m) {
                        self.flush_all(Duration::from_secs(2));
                        return;
                    }
                }
                if let Some(e) = got.error {
                    log::error(&format!("read from host: {e}"));
                    self.shutdown();
                    return;
                }
                if events.contains(PollFlags::POLLOUT) {
                    self.conns[i].flush();
                }
            }
            self.pump_stdins();
            let reaped = self.reap();
            self.check_ooms(reaped || oom);
            self.report_exits();
            if self.single && self.init_exited {
                log::info("the container exited; shutting down");
                self.flush_all(Duration::from_secs(2));
                self.shutdown();
                return;
            }
        }
    }

    /// Connection `conn` went away: its processes lose their owner, and their stdin (nobody
    /// forwards it any more) is closed once what was sent is written.
    fn on_disconnect(&mut self, conn: usize) {
        log::info(&format!("host disconnected from port {conn}"));
        let gone: Vec<Key> = self
            .owners
            .iter()
            .filter(|(_, c)| **c == conn)
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            self.owners.remove(&key);
            if key.0 == moat_agent_proto::FORWARD_ID {
                // A forwarded connection nobody relays any more: closed.
                self.pipes.retain(|p| p.key != key);
                self.stdins.remove(&key);
                self.procs.remove(&key);
                continue;
            }
            if let Some(s) = self.stdins.get_mut(&key) {
                let _ = s.take_waiting();
                s.close_when_drained();
                if s.done() {
                    self.stdins.remove(&key);
                }
            }
        }
    }

    /// Wait for a port or a pipe to be ready (or one tick). Ports are polled only while a host
    /// is connected.
    fn wait_ready(&mut self) -> nix::Result<Ready> {
        let mut fds = Vec::new();
        let mut conn_fd = Vec::new();
        for c in &self.conns {
            if c.connected() {
                let mut ev = PollFlags::POLLIN;
                if c.queued() > 0 {
                    ev |= PollFlags::POLLOUT;
                }
                conn_fd.push(Some(fds.len()));
                fds.push(PollFd::new(c.port.as_fd(), ev));
            } else {
                conn_fd.push(None);
            }
        }
        let first_pipe = fds.len();
        let n_pipes = if self.queued() < OUT_LIMIT {
            for p in &self.pipes {
                fds.push(PollFd::new(p.file.as_fd(), PollFlags::POLLIN));
            }
            self.pipes.len()
        } else {
            0
        };
        // Wake up when a full stdin pipe takes bytes again.
        for s in self.stdins.values().filter(|s| s.has_pending()) {
            fds.push(PollFd::new(s.file.as_fd(), PollFlags::POLLOUT));
        }
        // A process's exit, a host connecting to a port.
        for p in self.procs.values().filter(|p| p.status.is_none()) {
            if let Some(fd) = &p.pidfd {
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
            }
        }
        fds.push(PollFd::new(self.port_events.0.as_fd(), PollFlags::POLLIN));
        let oom_at = fds.len();
        if let Some(fd) = self.ooms.events_fd() {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        let timeout = self.sleep_for();
        let interrupted = match poll(
            &mut fds,
            PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(_) => false,
            Err(nix::errno::Errno::EINTR) => true,
            Err(e) => return Err(e),
        };
        let events = |i: usize| fds[i].revents().unwrap_or(PollFlags::empty());
        let conns = conn_fd
            .iter()
            .map(|f| match f {
                Some(i) if !interrupted => events(*i),
                _ => PollFlags::empty(),
            })
            .collect();
        let pipes = if interrupted {
            vec![]
        } else {
            (0..n_pipes)
                .filter(|i| !events(first_pipe + i).is_empty())
                .collect()
        };
        let oom = !interrupted && fds.len() > oom_at && !events(oom_at).is_empty();
        drop(fds);
        if oom {
            self.ooms.drain_events();
        }
        // Drain the edge-triggered port events (the disconnected ports are probed every turn).
        let mut evs = [nix::sys::epoll::EpollEvent::empty(); 8];
        while matches!(self.port_events.wait(&mut evs, 0u8), Ok(n) if n == evs.len()) {}
        Ok(Ready { conns, pipes, oom })
    }

    /// How long the loop may sleep: until the earliest exit's [`EOF_GRACE`] ends, the next OOM
    /// check while containers run, or [`SLEEP_MAX`].
    fn sleep_for(&self) -> Duration {
        let grace = self
            .procs
            .values()
            .filter_map(|p| p.status.map(|(_, t)| EOF_GRACE.saturating_sub(t.elapsed())))
            .min();
        [grace, self.ooms.next_check(), Some(SLEEP_MAX)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(SLEEP_MAX)
    }

    fn drain_pipe(&mut self, i: usize, buf: &mut [u8]) {
        let n = loop {
            match self.pipes[i].file.read(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // A terminal's master is non-blocking: nothing more for now.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                // EIO from a master: the last holder of the slave closed it (its end of file).
                r => break r.unwrap_or(0),
            }
        };
        if n == 0 {
            let p = self.pipes.swap_remove(i);
            if let Some(proc_) = self.procs.get_mut(&p.key) {
                proc_.open_pipes = proc_.open_pipes.saturating_sub(1);
                // A forwarded connection ends with its stream.
                if proc_.pid == FORWARD_PID && proc_.open_pipes == 0 {
                    proc_.status = Some((ExitStatus::Code(0), Instant::now()));
                }
            }
            return;
        }
        let p = &self.pipes[i];
        let key = p.key.clone();
        let msg = GuestMessage::Output {
            container_id: key.0.clone(),
            exec_id: key.1.clone(),
            stream: p.stream,
            data: buf[..n].to_vec(),
        };
        self.send_event(&key, &msg);
    }

    /// Write pending stdin bytes; answer the requests whose bytes are all in, drop the pipes the
    /// host closed or the process no longer reads.
    fn pump_stdins(&mut self) {
        let keys: Vec<Key> = self.stdins.keys().cloned().collect();
        for key in keys {
            let Some(s) = self.stdins.get_mut(&key) else {
                continue;
            };
            match s.pump() {
                Ok(Pumped::Pending) => {}
                Ok(Pumped::Drained(answer)) => {
                    if s.done() {
                        self.stdins.remove(&key);
                    }
                    if let Some((conn, id)) = answer {
                        self.send_to(
                            conn,
                            &GuestMessage::Response {
                                id,
                                result: Ok(Reply::Done),
                            },
                        );
                    }
                }
                Err(e) => {
                    let waiting = s.take_waiting();
                    self.stdins.remove(&key);
                    if let Some((conn, id)) = waiting {
                        let result = Err(AgentError {
                            code: ErrorCode::Io,
                            message: format!("stdin of {key:?}: {e}"),
                        });
                        self.send_to(conn, &GuestMessage::Response { id, result });
                    }
                }
            }
        }
    }

    /// `Stdin` from connection `conn`: queue the bytes; the answer comes from
    /// [`Agent::pump_stdins`].
    fn stdin(&mut self, conn: usize, id: u64, key: Key, data: Vec<u8>) -> Option<Result<Reply>> {
        let Some(s) = self.stdins.get_mut(&key) else {
            return Some(Err(AgentFailure::NotFound(format!("stdin of {key:?}"))));
        };
        if s.busy() {
            return Some(Err(AgentFailure::Busy(format!(
                "stdin of {key:?}: the previous chunk is not written yet"
            ))));
        }
        s.push((conn, id), data);
        self.pump_stdins();
        None
    }

    /// Handle one decoded (or undecodable) frame from connection `conn`; true when the loop
    /// must end.
    fn dispatch(&mut self, conn: usize, m: std::result::Result<HostMessage, DecodeError>) -> bool {
        match m {
            Ok(HostMessage {
                id,
                request:
                    Request::Stdin {
                        container_id,
                        exec_id,
                        data,
                    },
            }) => {
                if let Some(r) = self.stdin(conn, id, (container_id, exec_id), data) {
                    let result = r.map_err(|e| e.to_wire());
                    self.send_to(conn, &GuestMessage::Response { id, result });
                }
                false
            }
            Ok(m) => {
                let shutdown = m.request == Request::Shutdown;
                let result = self.handle(conn, m.request).map_err(|e| {
                    log::error(&format!("request {}: {e}", m.id));
                    e.to_wire()
                });
                self.send_to(conn, &GuestMessage::Response { id: m.id, result });
                shutdown
            }
            Err(e) => {
                let id = match &e {
                    DecodeError::Malformed { id, .. } => id.unwrap_or(0),
                    DecodeError::TooLarge { .. } => 0,
                };
                let result = Err(AgentError {
                    code: ErrorCode::Malformed,
                    message: e.to_string(),
                });
                self.send_to(conn, &GuestMessage::Response { id, result });
                false
            }
        }
    }

    /// Collect every exited child (we are PID 1: orphans are ours too); true if any was.
    fn reap(&mut self) -> bool {
        let mut any = false;
        loop {
            let (pid, status) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, c)) => (pid, ExitStatus::Code(c)),
                Ok(WaitStatus::Signaled(pid, s, _)) => (pid, ExitStatus::Signal(s as i32)),
                Ok(WaitStatus::StillAlive) | Err(_) => return any,
                Ok(_) => continue,
            };
            any = true;
            if let Some(p) = self.procs.values_mut().find(|p| p.pid == pid.as_raw()) {
                p.status = Some((status, Instant::now()));
            }
        }
    }

    /// Send `Exited` for each process that ended and whose output is flushed (or late).
    fn report_exits(&mut self) {
        let done: Vec<Key> = self
            .procs
            .iter()
            .filter(|(_, p)| {
                p.status
                    .is_some_and(|(_, t)| p.open_pipes == 0 || t.elapsed() > EOF_GRACE)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in done {
            if let Some(Proc {
                status: Some((status, _)),
                ..
            }) = self.procs.remove(&key)
            {
                if key.1.is_none() {
                    self.init_exited = true;
                }
                self.ttys.remove(&key);
                if let Some(mut s) = self.stdins.remove(&key) {
                    if let Some((conn, id)) = s.take_waiting() {
                        let result = Err(AgentError {
                            code: ErrorCode::NotFound,
                            message: format!("stdin of {key:?}: the process exited"),
                        });
                        self.send_to(conn, &GuestMessage::Response { id, result });
                    }
                }
                let msg = GuestMessage::Exited {
                    container_id: key.0.clone(),
                    exec_id: key.1.clone(),
                    status,
                };
                self.send_event(&key, &msg);
                self.owners.remove(&key);
            }
        }
    }
}
