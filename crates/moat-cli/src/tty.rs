//! `-t`: the container's terminal. moat listens on a console socket, the runtime core sends the
//! pty master over it during create/exec (queued in the connection: no accept is needed while the
//! single-threaded create runs), then moat copies between its own stdin/stdout and the master,
//! with the local terminal in raw mode when stdin is one (restored on drop) and its size copied.
//! A detached container (`-d -t`) keeps its master in the monitor, which copies the output to
//! the container's log and holds the terminal open (nothing writes to it: `exec -t` is the way in).

use std::io::IsTerminal;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::termios;

use crate::error::{CliError, Result};

/// A console socket waiting for the pty master.
pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    /// Listen in `dir` if its path is short enough for a socket address (108 bytes), else in /run.
    pub fn listen(dir: &Path) -> Result<ConsoleSocket> {
        let name = format!("moat-console-{}.sock", std::process::id());
        let mut path = dir.join(&name);
        if path.as_os_str().len() >= 100 {
            path = Path::new("/run").join(&name);
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

    /// Receive the master and start copying. Blocks the forwarded signals first so that the copy
    /// threads never take a SIGCHLD meant for the waiting main thread.
    pub fn attach(self) -> Result<Attached> {
        let master = self.receive_master()?;
        let mut signals = SigSet::empty();
        signals.add(Signal::SIGCHLD);
        for s in crate::run::FORWARDED {
            signals.add(*s);
        }
        signals
            .thread_block()
            .map_err(CliError::sys("block signals"))?;
        let stdin = std::io::stdin();
        let saved = if stdin.is_terminal() {
            let t = termios::tcgetattr(stdin.as_fd()).ok();
            if let Some(orig) = &t {
                let mut raw = orig.clone();
                termios::cfmakeraw(&mut raw);
                let _ = termios::tcsetattr(stdin.as_fd(), termios::SetArg::TCSANOW, &raw);
            }
            if let Ok(ws) = winsize() {
                let _ = moat_sys::fd::set_winsize(master.as_fd(), &ws);
            }
            t
        } else {
            None
        };
        let out: std::fs::File = master
            .try_clone()
            .map_err(CliError::io("dup", "pty master"))?
            .into();
        let inp: std::fs::File = master.into();
        let output = std::thread::spawn(move || {
            let (mut r, mut w) = (out, std::io::stdout());
            let _ = std::io::copy(&mut r, &mut w);
            let _ = std::io::Write::flush(&mut w);
        });
        std::thread::spawn(move || {
            let (mut r, mut w) = (std::io::stdin(), inp);
            let _ = std::io::copy(&mut r, &mut w);
        });
        Ok(Attached {
            saved,
            output: Some(output),
        })
    }
}

fn winsize() -> Result<nix::pty::Winsize> {
    moat_sys::fd::get_winsize(std::io::stdin().as_fd())
        .map_err(CliError::sys("read the terminal size"))
}

/// Restores the local terminal on drop.
pub struct Attached {
    saved: Option<termios::Termios>,
    /// Copies the container's output; it ends when the last holder of the pty slave exits.
    output: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Attached {
    fn drop(&mut self) {
        // Let the output the process wrote before exiting reach our stdout (bounded wait).
        if let Some(h) = self.output.take() {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            while !h.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
        if let Some(t) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), termios::SetArg::TCSANOW, t);
        }
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
