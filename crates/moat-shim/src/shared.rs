//! The shared shim: one shim process serving every pod of a node (Kuasar's 1:N model), as an
//! option. Per-pod shims stay the default.
//!
//! Enabled when containerd runs the shim as `containerd-shim-moat-shared-v2` (runtime type
//! `io.containerd.moat-shared.v2`, a second name of the same binary, like `moat-vm`), or when
//! containerd's environment has `MOAT_SHIM_SHARED=1` (every pod of every moat handler). VM pods
//! keep a shim of their own: a pod VM's QEMU, virtiofsd and agent link are owned by its shim.
//!
//! One shared shim per containerd (its `-address`) and namespace. Its files, under [`DIR`], are
//! named by a hash of the two (`<hash>.*`, the hash containerd's shim library uses for socket
//! names, so it is stable across shim versions):
//!
//! - `<hash>.sock`: the well-known ttrpc socket that `start` answers for every pod;
//! - `<hash>.lock`: held (`flock`) by the serving shim for its lifetime, holding its pid: a second
//!   shim refuses to serve while one does;
//! - `<hash>.start`: serialises `start` invocations and the shim's decision to exit, so that a
//!   `start` never hands out the address of a shim that is exiting;
//! - `<hash>.pending/<task id>`: a task `start` promised to the shim and whose Create has not
//!   arrived yet: the shim does not exit while one is recent;
//! - `<hash>.worker`: the private socket of the worker, the process that serves the Task API
//!   behind the keeper (see `keeper`: the keeper owns `<hash>.sock` and `<hash>.lock`);
//! - `<hash>.tasks/<task id>`: the worker's record of each task, from which a restarted worker
//!   re-adopts the pods (`service::record`);
//! - `<hash>.log`: the keeper's and the worker's log.
//!
//! The shim removes them all when it exits; after a crash, containerd's `delete` of its tasks does
//! ([`remove_stale_files`]). Lock files are unlinked while held; every taker checks that the file
//! it locked is still the one at the path (else it locks the new one).
//!
//! What it must never do: exit while it serves a container or a task was just promised to it, or
//! let one pod's request take the others down (`serve` answers a panicking request with an
//! error naming its task, in builds that unwind).

use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use nix::fcntl::{Flock, FlockArg};

/// The name containerd runs the shim under for shared-shim pods (`io.containerd.moat-shared.v2`).
pub const SHARED_SHIM_NAME: &str = "containerd-shim-moat-shared-v2";
/// In containerd's environment, `1` makes every moat handler (but VM pods) use the shared shim.
pub const SHARED_ENV: &str = "MOAT_SHIM_SHARED";
/// Set by `start` for the serving shim it spawns as the shared one (the serving shim runs from a
/// sealed copy of the binary, whose name says nothing).
pub const SERVE_ENV: &str = "MOAT_SHIM_SERVE_SHARED";
/// Where the shared shims keep their socket and lock files.
pub const DIR: &str = "/run/moat-shim/shared";

/// How long a task promised by `start` keeps the shim from exiting without its Create arriving.
const PENDING_FOR: Duration = Duration::from_secs(60);
/// How long `start` waits for another `start` (or an exiting shim) to release the start lock.
const START_LOCK_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("lock {path}: held by another shim for {waited:?}")]
    Busy { path: PathBuf, waited: Duration },
    #[error("another shared shim (pid {pid}) serves {sock}")]
    AlreadyServing { pid: String, sock: PathBuf },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SharedError + use<> {
    let path = path.to_owned();
    move |source| SharedError::Io { what, path, source }
}

/// The files of the shared shim of one containerd and namespace.
#[derive(Debug, Clone)]
pub struct Paths {
    pub sock: PathBuf,
    lock: PathBuf,
    start: PathBuf,
    pending: PathBuf,
    worker: PathBuf,
    tasks: PathBuf,
    log: PathBuf,
}

impl Paths {
    pub fn new(containerd_address: &str, namespace: &str) -> Paths {
        let addr = containerd_shim::socket_address(containerd_address, namespace, "moat-shared");
        let hash: String = addr
            .rsplit('/')
            .next()
            .unwrap_or("")
            .chars()
            .take(20)
            .collect();
        let f = |ext: &str| Path::new(DIR).join(format!("{hash}.{ext}"));
        Paths {
            sock: f("sock"),
            lock: f("lock"),
            start: f("start"),
            pending: f("pending"),
            worker: f("worker"),
            tasks: f("tasks"),
            log: f("log"),
        }
    }

    /// The worker's private socket.
    pub fn worker_sock(&self) -> PathBuf {
        self.worker.clone()
    }

    /// The address containerd is given (`unix://...`).
    pub fn address(&self) -> String {
        format!("unix://{}", self.sock.display())
    }
}

/// Whether `start`, run as `arg0`, should hand out the shared shim.
pub fn wanted(arg0: &str) -> bool {
    Path::new(arg0)
        .file_name()
        .is_some_and(|n| n == SHARED_SHIM_NAME)
        || std::env::var(SHARED_ENV).is_ok_and(|v| v == "1")
}

/// An exclusive `flock` on a lock file, released (and the file left) on drop.
pub struct Lock {
    _flock: Flock<File>,
    path: PathBuf,
}

impl Lock {
    /// Lock `path` (created if missing); `None` if another process holds it and `wait` has passed.
    fn take(path: &Path, wait: Duration) -> Result<Option<Lock>, SharedError> {
        let deadline = Instant::now() + wait;
        let mut remade = 0;
        loop {
            let file = match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
            {
                Ok(f) => f,
                // An exiting shim removed the (then empty) directory: make it again.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && remade < 3 => {
                    remade += 1;
                    if let Some(dir) = path.parent() {
                        let _ = std::fs::create_dir_all(dir);
                    }
                    continue;
                }
                Err(e) => return Err(io("open the lock file", path)(e)),
            };
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(flock) => {
                    // Its holder may have unlinked it before releasing it: lock the file that is
                    // at the path now.
                    let ours = flock.metadata().map(|m| m.ino()).ok();
                    let now = std::fs::metadata(path).map(|m| m.ino()).ok();
                    if ours.is_some() && ours == now {
                        return Ok(Some(Lock {
                            _flock: flock,
                            path: path.to_owned(),
                        }));
                    }
                }
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                    if Instant::now() >= deadline {
                        return Ok(None);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((_, e)) => return Err(io("flock", path)(e.into())),
            }
        }
    }

    /// Unlink the file while still holding it (see the module's doc).
    fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `start` for the shared shim: the address of the running one, else of one spawned by `spawn`
/// (which returns once it listens). The task is recorded as pending before the address is given.
pub fn start(
    paths: &Paths,
    id: &str,
    spawn: impl FnOnce(&str) -> Result<(), String>,
) -> Result<String, String> {
    std::fs::create_dir_all(DIR)
        .map_err(io("create", Path::new(DIR)))
        .map_err(|e| e.to_string())?;
    let lock = Lock::take(&paths.start, START_LOCK_WAIT)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            SharedError::Busy {
                path: paths.start.clone(),
                waited: START_LOCK_WAIT,
            }
            .to_string()
        })?;
    // Under the lock: an exiting shim removes the directory while it holds the lock.
    std::fs::create_dir_all(&paths.pending)
        .map_err(io("create", &paths.pending))
        .map_err(|e| e.to_string())?;
    let pending = paths.pending.join(id);
    std::fs::write(&pending, b"")
        .map_err(io("record the pending task", &pending))
        .map_err(|e| e.to_string())?;
    let address = paths.address();
    if std::os::unix::net::UnixStream::connect(&paths.sock).is_err() {
        if let Err(e) = spawn(&address) {
            let _ = std::fs::remove_file(&pending);
            return Err(e);
        }
    }
    drop(lock);
    Ok(address)
}

/// The serving shared shim's state: its paths, its lifetime lock, and the start lock once it has
/// decided to exit.
struct Serving {
    paths: Paths,
    /// `None` in a keeper's worker: the keeper holds it.
    lock: Option<Lock>,
    exiting: Mutex<Option<Lock>>,
}

static SERVING: OnceLock<Serving> = OnceLock::new();

/// Whether this process is to serve as the shared shim (`start` said so).
pub fn asked_to_serve() -> bool {
    std::env::var(SERVE_ENV).is_ok_and(|v| v == "1")
}

/// Become the shared shim of `paths`: take its lifetime lock (refused while another holds it)
/// and write our pid in it.
pub fn become_server(paths: Paths) -> Result<(), SharedError> {
    std::fs::create_dir_all(DIR).map_err(io("create", Path::new(DIR)))?;
    let Some(lock) = Lock::take(&paths.lock, Duration::ZERO)? else {
        let pid = std::fs::read_to_string(&paths.lock).unwrap_or_default();
        return Err(SharedError::AlreadyServing {
            pid: pid.trim().to_owned(),
            sock: paths.sock.clone(),
        });
    };
    std::fs::write(&paths.lock, std::process::id().to_string())
        .map_err(io("write", &paths.lock))?;
    let _ = SERVING.set(Serving {
        paths,
        lock: Some(lock),
        exiting: Mutex::new(None),
    });
    Ok(())
}

/// Serve as the worker of the keeper that holds the lifetime lock of `paths`.
pub fn become_worker(paths: Paths) {
    let _ = SERVING.set(Serving {
        paths,
        lock: None,
        exiting: Mutex::new(None),
    });
}

/// The directory of the serving worker's task records (`None` unless this is a keeper's worker).
pub fn tasks_dir() -> Option<PathBuf> {
    SERVING
        .get()
        .filter(|s| s.lock.is_none())
        .map(|s| s.paths.tasks.clone())
}

/// Send this process's log (the `log` crate's records) and its stderr, which its children
/// inherit, to `<hash>.log` (appended).
pub fn log_to_file(paths: &Paths) {
    use std::os::fd::AsRawFd;
    if let Ok(f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&paths.log)
    {
        let _ = nix::unistd::dup2(f.as_raw_fd(), 2);
    }
    let _ = log::set_logger(&StderrLog);
    log::set_max_level(log::LevelFilter::Info);
}

/// Log records as lines on stderr, with the time and the pid.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Info
    }

    fn log(&self, r: &log::Record) {
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        eprintln!(
            "{}.{:03} {} [{}] {}",
            t.as_secs(),
            t.subsec_millis(),
            r.level(),
            std::process::id(),
            r.args()
        );
    }

    fn flush(&self) {}
}

/// Whether this process serves as the shared shim.
pub fn serving() -> bool {
    SERVING.get().is_some()
}

/// The Create of a task promised by `start`: the task is no longer pending when this is dropped
/// (after its container is in the shim's state, or the Create failed).
pub struct Pending<'a>(pub &'a str);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(s) = SERVING.get() {
            let _ = std::fs::remove_file(s.paths.pending.join(self.0));
        }
    }
}

/// Whether task `id` was promised to this shared shim's worker by `start` and its Create never
/// returned: the Create that a dead worker was running (see `keeper`).
pub fn left_pending_by_a_dead_worker(id: &str) -> bool {
    SERVING
        .get()
        .filter(|s| s.lock.is_none())
        .is_some_and(|s| s.paths.pending.join(id).exists())
}

/// Shutdown with no container left: may the shim exit? Always for a per-pod shim. The shared
/// shim exits only when no `start` is under way and no task promised to it is pending; it then
/// keeps the start lock until it has exited, so that no `start` hands out its address meanwhile.
pub fn may_exit() -> bool {
    let Some(s) = SERVING.get() else {
        return true;
    };
    let mut exiting = s.exiting.lock().unwrap_or_else(|e| e.into_inner());
    if exiting.is_some() {
        return true;
    }
    let Ok(Some(lock)) = Lock::take(&s.paths.start, Duration::ZERO) else {
        return false;
    };
    if pending_tasks(&s.paths.pending) > 0 {
        return false;
    }
    *exiting = Some(lock);
    true
}

/// Shutdown found no container but could not exit yet (a `start` under way, or a task pending):
/// call `try_exit` every few seconds until it exits (`Some(true)`) or the shim serves a container
/// again (`None`: a later Shutdown decides then). One such watcher at a time.
pub fn exit_when_idle(try_exit: impl Fn() -> Option<bool> + Send + 'static) {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    static WATCHING: AtomicBool = AtomicBool::new(false);
    if WATCHING.swap(true, SeqCst) {
        return;
    }
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_secs(5));
            if try_exit() != Some(false) {
                break;
            }
        }
        WATCHING.store(false, SeqCst);
    });
}

/// containerd's `delete` after a shim died: if the shared shim of this containerd and namespace
/// is gone (its lifetime lock is free) and no `start` is under way, remove its files, as it
/// would have on exit. Nothing is touched while a shim serves or starts.
pub fn remove_stale_files(containerd_address: &str, namespace: &str) {
    let paths = Paths::new(containerd_address, namespace);
    if !paths.lock.exists() {
        return;
    }
    let Ok(Some(start)) = Lock::take(&paths.start, Duration::from_secs(5)) else {
        return;
    };
    let Ok(Some(lock)) = Lock::take(&paths.lock, Duration::ZERO) else {
        return;
    };
    log::info!(
        "remove the files of a gone shared shim: {}",
        paths.sock.display()
    );
    let _ = std::fs::remove_file(&paths.sock);
    let _ = std::fs::remove_file(&paths.worker);
    let _ = std::fs::remove_file(&paths.log);
    let _ = std::fs::remove_dir_all(&paths.pending);
    let _ = std::fs::remove_dir_all(&paths.tasks);
    lock.remove();
    start.remove();
}

/// Recent pending tasks; stale ones (a `start` whose Create never came) are removed.
fn pending_tasks(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in rd.flatten() {
        let age = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .unwrap_or_default();
        if age < PENDING_FOR {
            n += 1;
        } else {
            let _ = std::fs::remove_file(e.path());
        }
    }
    n
}

/// The shared shim is exiting: remove its socket and files. The socket goes first, then the
/// lock files (unlinked while held).
pub fn remove_files() {
    let Some(s) = SERVING.get() else {
        return;
    };
    let _ = std::fs::remove_file(&s.paths.sock);
    let _ = std::fs::remove_dir_all(&s.paths.pending);
    let _ = std::fs::remove_file(&s.paths.worker);
    let _ = std::fs::remove_dir_all(&s.paths.tasks);
    let _ = std::fs::remove_file(&s.paths.log);
    match &s.lock {
        Some(lock) => lock.remove(),
        // The keeper holds it: unlinked here, released when the keeper exits.
        None => {
            let _ = std::fs::remove_file(&s.paths.lock);
        }
    }
    if let Some(start) = s.exiting.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        start.remove();
    }
    let _ = std::fs::remove_dir(DIR);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_depend_on_containerd_and_namespace_only() {
        let a = Paths::new("/run/containerd/containerd.sock", "k8s.io");
        let b = Paths::new("/run/containerd/containerd.sock", "k8s.io");
        let c = Paths::new("/tmp/other/containerd.sock", "k8s.io");
        let d = Paths::new("/run/containerd/containerd.sock", "default");
        assert_eq!(a.sock, b.sock);
        assert_ne!(a.sock, c.sock);
        assert_ne!(a.sock, d.sock);
        assert!(a.sock.starts_with(DIR), "{}", a.sock.display());
        // A unix socket path must fit in sun_path.
        assert!(a.sock.as_os_str().len() < 100, "{}", a.sock.display());
        assert!(a.address().starts_with("unix:///"));
    }

    #[test]
    fn the_shared_name_asks_for_the_shared_shim() {
        if std::env::var(SHARED_ENV).is_ok() {
            return; // the node-wide switch answers yes for every name
        }
        assert!(wanted("/usr/local/bin/containerd-shim-moat-shared-v2"));
        assert!(wanted(SHARED_SHIM_NAME));
        assert!(!wanted("/usr/local/bin/containerd-shim-moat-v2"));
        assert!(!wanted("containerd-shim-moat-vm-v2"));
    }

    #[test]
    fn a_held_lock_is_refused_and_an_unlinked_one_is_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let first = Lock::take(&path, Duration::ZERO).unwrap().expect("free");
        assert!(Lock::take(&path, Duration::from_millis(30))
            .unwrap()
            .is_none());
        // The holder unlinks it and releases it: the next taker locks a new file at the path.
        first.remove();
        drop(first);
        let second = Lock::take(&path, Duration::ZERO).unwrap().expect("free");
        assert!(path.exists());
        assert!(Lock::take(&path, Duration::ZERO).unwrap().is_none());
        drop(second);
    }

    #[test]
    fn a_lock_in_a_removed_directory_is_taken_after_making_it_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone/x.start");
        let lock = Lock::take(&path, Duration::ZERO).unwrap().expect("free");
        assert!(path.exists());
        drop(lock);
    }

    #[test]
    fn stale_pending_tasks_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("fresh"), b"").unwrap();
        let old = dir.path().join("old");
        std::fs::write(&old, b"").unwrap();
        let f = File::options().write(true).open(&old).unwrap();
        f.set_modified(SystemTime::now() - PENDING_FOR - Duration::from_secs(1))
            .unwrap();
        assert_eq!(pending_tasks(dir.path()), 1);
        assert!(!old.exists());
    }
}
