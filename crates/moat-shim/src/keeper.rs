//! The keeper of the shared shim: the small process containerd talks to, so that the shim doing
//! the work (the *worker*) can die and be restarted without containerd noticing.
//!
//! Why it exists: containerd 1.6, on losing a task's ttrpc connection, runs the shim binary's
//! `delete` for the task (`cleanupAfterDeadShim`), publishes its exit and drops it: it never
//! re-attaches to a task whose shim died. One crash of a shared shim would end every pod of the
//! node. So the connections containerd holds end in the keeper, which only relays them:
//!
//! - it owns the shared shim's well-known socket (`<hash>.sock`) and its lifetime lock, and relays
//!   whole ttrpc frames (a 10-byte header, then the payload; never a partial frame) between each
//!   containerd connection and a connection of its own to the worker's private socket
//!   (`<hash>.worker`), all from one thread that polls every connection (two threads per
//!   connection cost the keeper about 20 KiB per connection, measured: 3.0 instead of 1.9 MiB
//!   PSS at 30 pods);
//! - when the worker dies, every request it was sent and did not answer is answered here: `Wait`,
//!   `State`, `Stats`, `Pids` and `Connect` (which change nothing) are sent again to the restarted
//!   worker, under the same stream id; any other is answered with `UNAVAILABLE` naming the restart
//!   (the call fails, the connection lives on). Requests that arrive while no worker runs wait for
//!   it. (Answering a `Wait` with an error would not do: containerd's CRI takes a failed `Wait` for
//!   the container's exit and deletes the task.)
//! - it is the worker's parent and a child subreaper: the container inits and exec'd processes
//!   that were the worker's children become its children when the worker dies; it reaps them and
//!   hands their exit statuses to the worker (a line `<pid> <status>` on the worker's stdin, kept
//!   while no worker runs), so exits while the worker was down are reported by the next one;
//! - it restarts a worker that died (after 0.1 s, doubling with each crash of the last minute); a
//!   worker that dies [`GIVE_UP_AFTER`] times within [`CRASH_WINDOW`] makes it give up: it exits,
//!   containerd sees the connections close and cleans up, as it did before there was a keeper. A worker that exits
//!   with status 0 (it served no container any more) ends the keeper too.
//!
//! The worker re-adopts the pods from its per-task records (`service::record`). The keeper never
//! parses more than a frame header and a request's method name, holds no state about tasks, and
//! starts no zygote: it is what must not crash. Its log, and the worker's, go to `<hash>.log`.
//!
//! What it must never do: forward part of a frame, answer a request twice, or keep running
//! without its worker beyond the crash-loop limit.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::ttrpc::proto::{
    MESSAGE_HEADER_LENGTH, MESSAGE_LENGTH_MAX, MESSAGE_TYPE_REQUEST, MESSAGE_TYPE_RESPONSE,
};
use containerd_shim::protos::ttrpc::{get_status, Code, Request, Response};

use crate::shared::{Paths, SharedError};

/// Set (to the keeper's pid) in the worker's environment.
pub const WORKER_ENV: &str = "MOAT_SHIM_SHARED_WORKER";
/// A worker that dies this many times within [`CRASH_WINDOW`] is not restarted again.
pub const GIVE_UP_AFTER: usize = 5;
pub const CRASH_WINDOW: Duration = Duration::from_secs(60);
/// How long a request waits for a worker to come back before it is answered `UNAVAILABLE`.
const WAIT_FOR_WORKER: Duration = Duration::from_secs(20);
/// Methods sent again to a restarted worker: they change nothing, and `Wait` must not fail.
const REPLAYED: &[&str] = &["Wait", "State", "Stats", "Pids", "Connect"];
/// The relay thread does little: a small stack keeps the keeper small.
const RELAY_STACK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    #[error(transparent)]
    Shared(#[from] SharedError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("start the worker: {0}")]
    Worker(String),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> KeeperError + use<> {
    let path = path.to_owned();
    move |source| KeeperError::Io { what, path, source }
}

/// Whether this process is the worker of a keeper (the keeper's pid).
pub fn keeper_pid() -> Option<i32> {
    std::env::var(WORKER_ENV).ok()?.parse().ok()
}

/// One ttrpc frame: its header and payload.
struct Frame {
    header: [u8; MESSAGE_HEADER_LENGTH],
    payload: Vec<u8>,
}

impl Frame {
    fn stream_id(&self) -> u32 {
        u32::from_be_bytes([
            self.header[4],
            self.header[5],
            self.header[6],
            self.header[7],
        ])
    }

    fn kind(&self) -> u8 {
        self.header[8]
    }

    /// Read one whole frame (`None` at a clean end of stream between frames).
    fn read(r: &mut impl Read) -> std::io::Result<Option<Frame>> {
        let mut header = [0u8; MESSAGE_HEADER_LENGTH];
        let mut got = 0;
        while got < header.len() {
            match r.read(&mut header[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len > MESSAGE_LENGTH_MAX {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a ttrpc frame of {len} bytes"),
            ));
        }
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload)?;
        Ok(Some(Frame { header, payload }))
    }

    fn write(&self, w: &mut impl Write) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(self.header.len() + self.payload.len());
        buf.extend_from_slice(&self.header);
        buf.extend_from_slice(&self.payload);
        w.write_all(&buf)
    }

    /// A Response on `stream` with an error status.
    fn error(stream: u32, code: Code, message: String) -> Frame {
        let res = Response {
            status: Some(get_status(code, message)).into(),
            ..Default::default()
        };
        let payload = res.write_to_bytes().unwrap_or_default();
        let mut header = [0u8; MESSAGE_HEADER_LENGTH];
        header[..4].copy_from_slice(&(payload.len() as u32).to_be_bytes());
        header[4..8].copy_from_slice(&stream.to_be_bytes());
        header[8] = MESSAGE_TYPE_RESPONSE;
        Frame { header, payload }
    }
}

/// The method of a Request frame (`Wait`, `Create`, ...).
fn method(frame: &Frame) -> String {
    Request::parse_from_bytes(&frame.payload)
        .map(|r| r.method)
        .unwrap_or_default()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The worker as the relay sees it: a generation number, bumped at each (re)start.
#[derive(Default)]
struct WorkerState {
    generation: u64,
    up: bool,
}

/// What the supervisor (the main thread) and the relay thread share.
struct Keeper {
    worker_sock: PathBuf,
    state: Mutex<WorkerState>,
    /// Written to (a byte) when `state` changes: wakes the relay's `poll`.
    wake: OwnedFd,
}

impl Keeper {
    fn changed(&self) {
        let _ = nix::unistd::write(&self.wake, &[1]);
    }
}

/// A request sent to the worker and not answered yet.
struct Pending {
    method: String,
    /// Kept for the methods sent again to a restarted worker.
    replay: Option<Frame>,
}

/// One containerd connection and its connection to the worker.
struct Conn {
    client: UnixStream,
    /// Bytes of a frame from containerd not complete yet.
    from_client: Vec<u8>,
    worker: Option<UnixStream>,
    /// Bytes of a frame from the worker not complete yet.
    from_worker: Vec<u8>,
    /// The worker generation `worker` is (or was last) connected to, and when it was lost.
    generation: u64,
    lost_at: Option<Instant>,
    pending: HashMap<u32, Pending>,
    /// Requests that arrived while no worker was connected, with their arrival.
    queued: Vec<(Frame, Instant)>,
    closed: bool,
}

impl Conn {
    fn answer(&mut self, frame: &Frame) {
        if frame.write(&mut self.client).is_err() {
            self.closed = true;
        }
    }

    fn unavailable(&mut self, stream: u32, m: &str, why: &str) {
        log::warn!("{m}: {why}; answered UNAVAILABLE");
        self.answer(&Frame::error(
            stream,
            Code::UNAVAILABLE,
            format!("{m}: the shared shim's worker {why}; retry"),
        ));
    }

    /// Send a request (or another frame) to the worker, noting a request as pending.
    fn forward(&mut self, frame: Frame) {
        let Some(worker) = self.worker.as_mut() else {
            if frame.kind() == MESSAGE_TYPE_REQUEST {
                self.queued.push((frame, Instant::now()));
            }
            return;
        };
        let ok = frame.write(worker).is_ok();
        if frame.kind() == MESSAGE_TYPE_REQUEST {
            let (m, id) = (method(&frame), frame.stream_id());
            let replay = REPLAYED.contains(&m.as_str()).then_some(frame);
            self.pending.insert(id, Pending { method: m, replay });
        }
        if !ok {
            self.worker_lost();
        }
    }

    /// The worker's connection ended (it died): answer what it left unanswered, but for the
    /// requests to be sent again to the next worker.
    fn worker_lost(&mut self) {
        if let Some(w) = self.worker.take() {
            let _ = w.shutdown(std::net::Shutdown::Both);
        }
        self.from_worker.clear();
        self.lost_at = Some(Instant::now());
        let failed: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, p)| p.replay.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in failed {
            if let Some(p) = self.pending.remove(&id) {
                self.unavailable(id, &p.method, "died before answering");
            }
        }
    }

    /// Connect to the worker of `generation`: send again what is to be replayed, then what
    /// waited.
    fn attach(&mut self, mut worker: UnixStream, generation: u64) {
        let mut ok = true;
        for p in self.pending.values() {
            if let Some(f) = &p.replay {
                ok &= f.write(&mut worker).is_ok();
            }
        }
        self.worker = Some(worker);
        self.generation = generation;
        self.lost_at = None;
        if !ok {
            self.worker_lost();
            return;
        }
        for (f, _) in std::mem::take(&mut self.queued) {
            self.forward(f);
        }
    }

    /// Requests that waited too long for a worker.
    fn expire(&mut self) {
        let (old, young): (Vec<_>, Vec<_>) = std::mem::take(&mut self.queued)
            .into_iter()
            .partition(|(_, at)| at.elapsed() >= WAIT_FOR_WORKER);
        self.queued = young;
        for (f, _) in old {
            let m = method(&f);
            self.unavailable(f.stream_id(), &m, "did not come back in time");
        }
    }
}

/// Move the whole frames at the start of `buf` out of it.
fn frames(buf: &mut Vec<u8>) -> Result<Vec<Frame>, std::io::Error> {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let mut rest = &buf[at..];
        if rest.len() < MESSAGE_HEADER_LENGTH {
            break;
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len > MESSAGE_LENGTH_MAX {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a ttrpc frame of {len} bytes"),
            ));
        }
        if rest.len() < MESSAGE_HEADER_LENGTH + len {
            break;
        }
        if let Ok(Some(f)) = Frame::read(&mut rest) {
            out.push(f);
        }
        at += MESSAGE_HEADER_LENGTH + len;
    }
    buf.drain(..at);
    Ok(out)
}

/// Read what `fd` has (it polled readable) onto `buf`; `false` at its end or on an error.
fn fill(mut s: &UnixStream, buf: &mut Vec<u8>, chunk: &mut [u8]) -> bool {
    match s.read(chunk) {
        Ok(0) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        Err(e) => e.kind() == std::io::ErrorKind::Interrupted,
    }
}

/// The relay: one thread polling the listener, every containerd connection and its worker
/// connection (one thread for all keeps the keeper small).
fn relay(keeper: &Keeper, listener: UnixListener, woken: OwnedFd) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut conns: Vec<Conn> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let (generation, up) = {
            let st = lock(&keeper.state);
            (st.generation, st.up)
        };
        // Connect whoever lacks a worker, to the new one (or, a while after losing its
        // connection while the worker lives on, to the same one).
        for c in conns.iter_mut().filter(|c| c.worker.is_none()) {
            let again = c
                .lost_at
                .is_none_or(|t| t.elapsed() > Duration::from_secs(2));
            if up && (generation > c.generation || again) {
                if let Ok(w) = UnixStream::connect(&keeper.worker_sock) {
                    c.attach(w, generation);
                }
            }
            c.expire();
        }
        conns.retain(|c| !c.closed);
        let waiting = conns.iter().any(|c| c.worker.is_none());
        let polled_workers: Vec<bool> = conns.iter().map(|c| c.worker.is_some()).collect();
        let (ready, listener_ready, woke) = {
            let mut fds = vec![
                PollFd::new(listener.as_fd(), PollFlags::POLLIN),
                PollFd::new(woken.as_fd(), PollFlags::POLLIN),
            ];
            for c in &conns {
                fds.push(PollFd::new(c.client.as_fd(), PollFlags::POLLIN));
                if let Some(w) = &c.worker {
                    fds.push(PollFd::new(w.as_fd(), PollFlags::POLLIN));
                }
            }
            let timeout = if waiting {
                PollTimeout::from(200u16)
            } else {
                PollTimeout::NONE
            };
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    log::error!("poll: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
            let any = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            let ready: Vec<bool> = fds.iter().skip(2).map(any).collect();
            (ready, any(&fds[0]), any(&fds[1]))
        };
        if woke {
            let _ = nix::unistd::read(woken.as_raw_fd(), &mut chunk);
        }
        let mut ready = ready.into_iter();
        for (c, had_worker) in conns.iter_mut().zip(polled_workers) {
            let client_ready = ready.next() == Some(true);
            let worker_ready = had_worker && ready.next() == Some(true);
            if client_ready {
                if !fill(&c.client, &mut c.from_client, &mut chunk) {
                    c.closed = true;
                }
                match frames(&mut c.from_client) {
                    Ok(fs) => fs.into_iter().for_each(|f| c.forward(f)),
                    Err(e) => {
                        log::warn!("from containerd: {e}");
                        c.closed = true;
                    }
                }
            }
            if !worker_ready {
                continue;
            }
            let alive = match c.worker.as_ref() {
                Some(w) => fill(w, &mut c.from_worker, &mut chunk),
                None => continue,
            };
            match frames(&mut c.from_worker) {
                Ok(fs) => {
                    for f in fs {
                        if f.kind() == MESSAGE_TYPE_RESPONSE {
                            c.pending.remove(&f.stream_id());
                        }
                        c.answer(&f);
                    }
                }
                Err(_) => c.worker_lost(),
            }
            if !alive {
                c.worker_lost();
            }
        }
        for c in conns.iter_mut().filter(|c| c.closed) {
            if let Some(w) = c.worker.take() {
                let _ = w.shutdown(std::net::Shutdown::Both);
            }
        }
        if listener_ready {
            if let Ok((client, _)) = listener.accept() {
                conns.push(Conn {
                    client,
                    from_client: Vec::new(),
                    worker: None,
                    from_worker: Vec::new(),
                    generation: 0,
                    lost_at: None,
                    pending: HashMap::new(),
                    queued: Vec::new(),
                    closed: false,
                });
            }
        }
    }
}

/// A running worker: the process, and its stdin (where exits are written).
struct Worker {
    child: Child,
    exits: ChildStdin,
}

/// Start a worker serving `sock`; return once it listens (it closes its stdout).
fn spawn_worker(args: &[String], sock: &Path) -> Result<Worker, KeeperError> {
    let flags =
        containerd_shim::parse(&args[1..]).map_err(|e| KeeperError::Worker(e.to_string()))?;
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0(
        args.first()
            .map(String::as_str)
            .unwrap_or("containerd-shim-moat-v2"),
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .args(crate::bootstrap::serve_args(
        &flags,
        &format!("unix://{}", sock.display()),
    ))
    .env(WORKER_ENV, std::process::id().to_string());
    // The worker runs from our sealed binary: told so, it shares our text pages instead of
    // making a sealed copy of its own (the overlay's binary cannot be overlaid again).
    if let Some((k, v)) = moat_sys::fd::sealed_exe_marker() {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| KeeperError::Worker(e.to_string()))?;
    let mut sink = Vec::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_end(&mut sink);
    }
    let exits = child
        .stdin
        .take()
        .ok_or_else(|| KeeperError::Worker("no stdin".into()))?;
    Ok(Worker { child, exits })
}

/// Serve as the keeper of the shared shim of `args` (the flags `start` gave).
pub fn run(args: &[String]) -> Result<(), KeeperError> {
    let flags =
        containerd_shim::parse(&args[1..]).map_err(|e| KeeperError::Worker(e.to_string()))?;
    let paths = Paths::new(&flags.address, &flags.namespace);
    crate::shared::become_server(paths.clone())?;
    crate::shared::log_to_file(&paths);
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| io("become a child subreaper", Path::new("/"))(e.into()))?;
    let _ = std::fs::remove_file(&paths.sock);
    let listener = UnixListener::bind(&paths.sock).map_err(io("listen on", &paths.sock))?;
    let _ = std::fs::remove_file(paths.worker_sock());
    let (woken, wake) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| io("make the wake-up pipe", Path::new("pipe"))(e.into()))?;
    let keeper = Arc::new(Keeper {
        worker_sock: paths.worker_sock(),
        state: Mutex::default(),
        wake,
    });
    let mut worker = spawn_worker(args, &keeper.worker_sock)?;
    log::info!(
        "keeper {} serves {}; worker {}",
        std::process::id(),
        paths.sock.display(),
        worker.child.id()
    );
    {
        let mut st = lock(&keeper.state);
        st.generation = 1;
        st.up = true;
    }
    let k = keeper.clone();
    std::thread::Builder::new()
        .stack_size(RELAY_STACK)
        .spawn(move || relay(&k, listener, woken))
        .map_err(io("spawn the relay thread", &paths.sock))?;
    // Tell `start` (which reads our stdout until EOF) that the socket listens.
    let _ = nix::unistd::dup2(2, 1);
    supervise(args, &keeper, &mut worker);
    Ok(())
}

/// Reap every child: the worker (restarted unless it exited cleanly or crash-loops) and the
/// processes reparented to the keeper (their exits handed to the worker). Returns when the
/// keeper is to exit.
fn supervise(args: &[String], keeper: &Keeper, worker: &mut Worker) {
    use nix::sys::wait::{waitpid, WaitStatus};
    let mut crashes: Vec<Instant> = Vec::new();
    // Exits to hand to the next worker.
    let mut held: Vec<u8> = Vec::new();
    loop {
        let (pid, status) = match waitpid(None, None) {
            Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), code),
            Ok(WaitStatus::Signaled(pid, sig, _)) => (pid.as_raw(), 128 + sig as i32),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                log::error!("waitpid: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if pid != worker.child.id() as i32 {
            let line = format!("{pid} {status}\n");
            if worker.exits.write_all(line.as_bytes()).is_err() {
                held.extend_from_slice(line.as_bytes());
            }
            continue;
        }
        lock(&keeper.state).up = false;
        keeper.changed();
        if status == 0 {
            log::info!("worker {pid} exited: the shared shim has no container left");
            return;
        }
        if !restart(args, keeper, worker, &mut crashes, &mut held, pid, status) {
            return;
        }
    }
}

/// Restart the worker that died (`pid`, `status`) after a backoff, until one starts; `false`
/// when it crash-loops (the keeper gives up).
fn restart(
    args: &[String],
    keeper: &Keeper,
    worker: &mut Worker,
    crashes: &mut Vec<Instant>,
    held: &mut Vec<u8>,
    pid: i32,
    status: i32,
) -> bool {
    let mut why = format!("worker {pid} died (status {status})");
    loop {
        let now = Instant::now();
        crashes.retain(|t| now.duration_since(*t) < CRASH_WINDOW);
        crashes.push(now);
        if crashes.len() >= GIVE_UP_AFTER {
            log::error!(
                "{why}, {} times in {CRASH_WINDOW:?}: giving up",
                crashes.len()
            );
            return false;
        }
        let backoff = Duration::from_millis(100 << (crashes.len() - 1).min(5));
        log::warn!("{why}; restarting it in {backoff:?}");
        std::thread::sleep(backoff);
        let t = Instant::now();
        match spawn_worker(args, &keeper.worker_sock) {
            Ok(mut w) => {
                // The exits seen while no worker ran, first.
                let _ = w.exits.write_all(held);
                held.clear();
                log::info!(
                    "worker {} serves after a restart in {:?}",
                    w.child.id(),
                    t.elapsed()
                );
                *worker = w;
                let mut st = lock(&keeper.state);
                st.generation += 1;
                st.up = true;
                keeper.changed();
                return true;
            }
            Err(e) => why = format!("restart the worker: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_read_whole_and_errors_are_responses() {
        let f = Frame::error(7, Code::UNAVAILABLE, "restarting".into());
        let mut buf = Vec::new();
        f.write(&mut buf).unwrap();
        let mut r = &buf[..];
        let back = Frame::read(&mut r).unwrap().unwrap();
        assert_eq!(back.stream_id(), 7);
        assert_eq!(back.kind(), MESSAGE_TYPE_RESPONSE);
        let res = Response::parse_from_bytes(&back.payload).unwrap();
        assert_eq!(res.status.code(), Code::UNAVAILABLE);
        assert_eq!(res.status.message, "restarting");
        assert!(Frame::read(&mut r).unwrap().is_none());
        // A partial frame is an error, never a frame.
        let mut short = &buf[..buf.len() - 1];
        assert!(Frame::read(&mut short).is_err());
    }

    #[test]
    fn only_whole_frames_leave_the_buffer() {
        let mut one = Vec::new();
        Frame::error(1, Code::UNAVAILABLE, "a".into())
            .write(&mut one)
            .unwrap();
        let mut buf = one.clone();
        buf.extend_from_slice(&one[..one.len() - 3]);
        let got = frames(&mut buf).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].stream_id(), 1);
        // The partial second frame stays, and is complete once the rest arrives.
        assert_eq!(buf.len(), one.len() - 3);
        buf.extend_from_slice(&one[one.len() - 3..]);
        assert_eq!(frames(&mut buf).unwrap().len(), 1);
        assert!(buf.is_empty());
        // A header announcing more than ttrpc allows is an error, not a wait.
        let mut huge = vec![0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 1, 0];
        assert!(frames(&mut huge).is_err());
    }

    fn request(stream: u32, m: &str) -> Frame {
        let payload = Request {
            service: "containerd.task.v2.Task".into(),
            method: m.into(),
            ..Default::default()
        }
        .write_to_bytes()
        .unwrap();
        let mut header = [0u8; MESSAGE_HEADER_LENGTH];
        header[..4].copy_from_slice(&(payload.len() as u32).to_be_bytes());
        header[4..8].copy_from_slice(&stream.to_be_bytes());
        header[8] = MESSAGE_TYPE_REQUEST;
        Frame { header, payload }
    }

    #[test]
    fn a_dead_workers_requests_are_answered_or_replayed() {
        let (client, mut containerd) = UnixStream::pair().unwrap();
        let (worker, mut old) = UnixStream::pair().unwrap();
        let mut c = Conn {
            client,
            from_client: Vec::new(),
            worker: Some(worker),
            from_worker: Vec::new(),
            generation: 1,
            lost_at: None,
            pending: HashMap::new(),
            queued: Vec::new(),
            closed: false,
        };
        c.forward(request(1, "Kill"));
        c.forward(request(3, "Wait"));
        // The old worker got both, whole.
        assert_eq!(method(&Frame::read(&mut old).unwrap().unwrap()), "Kill");
        assert_eq!(method(&Frame::read(&mut old).unwrap().unwrap()), "Wait");
        drop(old);
        c.worker_lost();
        // Kill is answered UNAVAILABLE; Wait is kept.
        let f = Frame::read(&mut containerd).unwrap().unwrap();
        assert_eq!((f.stream_id(), f.kind()), (1, MESSAGE_TYPE_RESPONSE));
        let res = Response::parse_from_bytes(&f.payload).unwrap();
        assert_eq!(res.status.code(), Code::UNAVAILABLE);
        assert!(
            res.status.message.starts_with("Kill: "),
            "{}",
            res.status.message
        );
        assert_eq!(c.pending.keys().copied().collect::<Vec<_>>(), vec![3]);
        // A request while no worker is connected waits; the new worker gets the Wait again
        // (same stream id), then it.
        c.forward(request(5, "State"));
        let (worker, mut new) = UnixStream::pair().unwrap();
        c.attach(worker, 2);
        let again = Frame::read(&mut new).unwrap().unwrap();
        assert_eq!((again.stream_id(), method(&again).as_str()), (3, "Wait"));
        let queued = Frame::read(&mut new).unwrap().unwrap();
        assert_eq!((queued.stream_id(), method(&queued).as_str()), (5, "State"));
        assert!(c.queued.is_empty());
    }

    #[test]
    fn the_method_of_a_request_is_read() {
        let req = Request {
            service: "containerd.task.v2.Task".into(),
            method: "Wait".into(),
            ..Default::default()
        };
        let payload = req.write_to_bytes().unwrap();
        let f = Frame {
            header: [0; MESSAGE_HEADER_LENGTH],
            payload,
        };
        assert_eq!(method(&f), "Wait");
    }
}
