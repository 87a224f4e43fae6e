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
//!   (`<hash>.worker`);
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
//! - it restarts a worker that died (after 0.1 s, doubling to 3.2 s); a worker that dies
//!   [`GIVE_UP_AFTER`] times within [`CRASH_WINDOW`] makes it give up: it exits, containerd sees
//!   the connections close and cleans up, as it did before there was a keeper. A worker that exits
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
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
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
/// Relay threads do little: small stacks keep the keeper small.
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

/// The worker as the relays see it: a generation number, bumped at each (re)start.
#[derive(Default)]
struct WorkerState {
    generation: u64,
    up: bool,
}

struct Keeper {
    worker_sock: PathBuf,
    state: Mutex<WorkerState>,
    changed: Condvar,
}

impl Keeper {
    /// Wait for a worker newer than `seen` (or, after a while, the same one: it may have closed
    /// one connection only) and connect to it. `None` once `closed` says the relay is over.
    fn connect(&self, seen: u64, closed: &dyn Fn() -> bool) -> Option<(u64, UnixStream)> {
        let since = Instant::now();
        loop {
            if closed() {
                return None;
            }
            let generation = {
                let st = lock(&self.state);
                let st = if st.up && st.generation > seen {
                    st
                } else {
                    self.changed
                        .wait_timeout(st, Duration::from_millis(500))
                        .map(|(g, _)| g)
                        .unwrap_or_else(|e| e.into_inner().0)
                };
                (st.up && (st.generation > seen || since.elapsed() > Duration::from_secs(2)))
                    .then_some(st.generation)
            };
            if let Some(g) = generation {
                match UnixStream::connect(&self.worker_sock) {
                    Ok(s) => return Some((g, s)),
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    }
}

/// A request sent to the worker and not answered yet.
struct Pending {
    method: String,
    /// Kept for the methods sent again to a restarted worker.
    replay: Option<Frame>,
}

#[derive(Default)]
struct ConnState {
    worker: Option<UnixStream>,
    pending: HashMap<u32, Pending>,
    closed: bool,
}

/// One containerd connection.
struct Conn {
    client: Mutex<UnixStream>,
    state: Mutex<ConnState>,
    changed: Condvar,
}

impl Conn {
    fn answer(&self, frame: &Frame) {
        let _ = frame.write(&mut *lock(&self.client));
    }

    fn closed(&self) -> bool {
        lock(&self.state).closed
    }
}

/// containerd's side: forward each whole frame to the worker, noting requests as pending.
fn client_to_worker(keeper: &Keeper, conn: &Conn, mut client: UnixStream) {
    while let Ok(Some(frame)) = Frame::read(&mut client) {
        let request = frame.kind() == MESSAGE_TYPE_REQUEST;
        let mut st = lock(&conn.state);
        let deadline = Instant::now() + WAIT_FOR_WORKER;
        while st.worker.is_none() && Instant::now() < deadline {
            st = conn
                .changed
                .wait_timeout(st, Duration::from_millis(200))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        let Some(worker) = st.worker.as_mut() else {
            drop(st);
            if request {
                let m = method(&frame);
                log::warn!("{m}: no worker for {WAIT_FOR_WORKER:?}");
                conn.answer(&Frame::error(
                    frame.stream_id(),
                    Code::UNAVAILABLE,
                    format!("{m}: the shared shim's worker is restarting"),
                ));
            }
            continue;
        };
        // A failed write is the worker's death: the other relay answers what is pending.
        let _ = frame.write(worker);
        if request {
            let (m, id) = (method(&frame), frame.stream_id());
            let replay = REPLAYED.contains(&m.as_str()).then_some(frame);
            st.pending.insert(id, Pending { method: m, replay });
        }
    }
    let mut st = lock(&conn.state);
    st.closed = true;
    if let Some(w) = st.worker.take() {
        let _ = w.shutdown(std::net::Shutdown::Both);
    }
    conn.changed.notify_all();
    keeper.changed.notify_all();
}

/// The worker's side: connect (again after each restart), send again what is to be replayed,
/// forward each whole frame to containerd; when the worker dies, answer what it left unanswered.
fn worker_to_client(keeper: &Keeper, conn: &Conn) {
    let mut seen = 0;
    loop {
        let Some((generation, worker)) = keeper.connect(seen, &|| conn.closed()) else {
            return;
        };
        seen = generation;
        let Ok(mut reader) = worker.try_clone() else {
            continue;
        };
        {
            let mut st = lock(&conn.state);
            if st.closed {
                return;
            }
            let mut w = worker;
            for p in st.pending.values() {
                if let Some(f) = &p.replay {
                    let _ = f.write(&mut w);
                }
            }
            st.worker = Some(w);
            conn.changed.notify_all();
        }
        while let Ok(Some(frame)) = Frame::read(&mut reader) {
            if frame.kind() == MESSAGE_TYPE_RESPONSE {
                lock(&conn.state).pending.remove(&frame.stream_id());
            }
            conn.answer(&frame);
        }
        let failed: Vec<(u32, String)> = {
            let mut st = lock(&conn.state);
            st.worker = None;
            if st.closed {
                return;
            }
            let ids: Vec<u32> = st
                .pending
                .iter()
                .filter(|(_, p)| p.replay.is_none())
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| st.pending.remove(&id).map(|p| (id, p.method)))
                .collect()
        };
        for (id, m) in failed {
            log::warn!("{m}: the worker died before answering; answered UNAVAILABLE");
            conn.answer(&Frame::error(
                id,
                Code::UNAVAILABLE,
                format!("{m}: the shared shim's worker died and is being restarted; retry"),
            ));
        }
    }
}

fn relay(keeper: Arc<Keeper>, client: UnixStream) -> std::io::Result<()> {
    let conn = Arc::new(Conn {
        client: Mutex::new(client.try_clone()?),
        state: Mutex::default(),
        changed: Condvar::new(),
    });
    let (k, c) = (keeper.clone(), conn.clone());
    std::thread::Builder::new()
        .stack_size(RELAY_STACK)
        .spawn(move || worker_to_client(&k, &c))?;
    std::thread::Builder::new()
        .stack_size(RELAY_STACK)
        .spawn(move || client_to_worker(&keeper, &conn, client))?;
    Ok(())
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
    .args([
        "-namespace",
        &flags.namespace,
        "-id",
        &flags.id,
        "-address",
        &flags.address,
        "-socket",
        &format!("unix://{}", sock.display()),
    ])
    .env(WORKER_ENV, std::process::id().to_string());
    // The worker runs from our sealed binary: told so, it shares our text pages instead of
    // making a sealed copy of its own (the overlay's binary cannot be overlaid again).
    if let Some((k, v)) = moat_sys::fd::sealed_exe_marker() {
        cmd.env(k, v);
    }
    if flags.debug {
        cmd.arg("-debug");
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
    let keeper = Arc::new(Keeper {
        worker_sock: paths.worker_sock(),
        state: Mutex::default(),
        changed: Condvar::new(),
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
        .spawn(move || {
            for client in listener.incoming().flatten() {
                if let Err(e) = relay(k.clone(), client) {
                    log::warn!("relay a connection: {e}");
                }
            }
        })
        .map_err(io("spawn the accept thread", &paths.sock))?;
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
        {
            let mut st = lock(&keeper.state);
            st.up = false;
        }
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
                keeper.changed.notify_all();
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
