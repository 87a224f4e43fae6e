//! `-t`: the container's terminal. moat listens on a console socket, the runtime core sends the
//! pty master over it during create/exec (queued in the connection: no accept is needed while the
//! single-threaded create runs), then moat relays the master to its own stdin/stdout with
//! `moat_runtime::tty::Relay` (the one `moat-runtime run` uses: raw local terminal restored on
//! drop, size copied, the end of a piped stdin passed on as the pty's EOF).
//! A detached container (`-d -t`) keeps its master in the monitor, which copies the output to
//! the container's log and holds the terminal open (nothing writes to it: `exec -t` is the way in).

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use moat_runtime::tty::Relay;
use nix::sys::signal::{SigSet, Signal};

use crate::error::{CliError, Result};

/// A console socket waiting for the pty master.
pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    /// Listen in `dir` if its path is short enough for a socket address (108 bytes), else in
    /// `short` (/run; rootless, `$XDG_RUNTIME_DIR/moat`).
    pub fn listen(dir: &Path, short: &Path) -> Result<ConsoleSocket> {
        let name = format!("moat-console-{}.sock", std::process::id());
        let mut path = dir.join(&name);
        if path.as_os_str().len() >= 100 {
            std::fs::create_dir_all(short).map_err(CliError::io("mkdir", short))?;
            path = short.join(&name);
        }
        let _ = std::fs::remove_file(&path);
        let listener =
            UnixListener::bind(&path).map_err(CliError::io("listen on", path.clone()))?;
        Ok(ConsoleSocket { listener, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Receive the pty master the runtime sent (the socket file is removed).
    pub fn receive_master(self) -> Result<OwnedFd> {
        let (conn, _) = self
            .listener
            .accept()
            .map_err(CliError::io("accept on", self.path.clone()))?;
        let _ = std::fs::remove_file(&self.path);
        let mut buf = [0u8; 4096];
        let (_, mut fds) = moat_sys::fd::recv_fds(conn.as_fd(), &mut buf)
            .map_err(CliError::sys("receive the pty master"))?;
        fds.pop()
            .ok_or_else(|| CliError::Usage("the runtime sent no pty master".into()))
    }

    /// Receive the master and start copying ([`moat_runtime::tty::Relay`], shared with
    /// `moat-runtime run`). Blocks the forwarded signals first so that the copy threads never
    /// take a SIGCHLD meant for the waiting main thread.
    pub fn attach(self) -> Result<Relay> {
        let master = self.receive_master()?;
        let mut signals = SigSet::empty();
        signals.add(Signal::SIGCHLD);
        for s in crate::run::FORWARDED {
            signals.add(*s);
        }
        signals
            .thread_block()
            .map_err(CliError::sys("block signals"))?;
        Relay::start(master).map_err(|e| CliError::Usage(e.to_string()))
    }
}

/// `-d -t`: copy the container's terminal output into `log` on a thread and keep the master
/// open for as long as the returned handle lives (the container's shell sees a terminal that
/// never reaches end-of-file, as with `docker run -dt`).
pub fn log_terminal(master: OwnedFd, log: std::fs::File) -> Result<OwnedFd> {
    let keep = master
        .try_clone()
        .map_err(CliError::io("dup", "pty master"))?;
    std::thread::spawn(move || {
        let (mut r, mut w) = (std::fs::File::from(master), log);
        let _ = std::io::copy(&mut r, &mut w);
    });
    Ok(keep)
}
