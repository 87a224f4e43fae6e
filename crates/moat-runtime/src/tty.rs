//! The terminal of a foreground container when the caller gave no console socket, as runc and
//! crun do: the runtime keeps one end of a socketpair, hands the other to the core as the console
//! socket (the init sends the pty master over it before reporting ready), then relays the master
//! to its own stdin/stdout ([`Relay`]).
//!
//! When stdin is a terminal it is put in raw mode (restored when the [`Relay`] is dropped, on
//! every path out of the command) and its size is copied to the pty, at start and on each
//! SIGWINCH ([`Relay::resize`]). When stdin is not a terminal its bytes are copied as they come
//! and its end is passed on as the pty's end-of-file character (^D, twice after a partial line),
//! so a `cat` in the container sees EOF.
//!
//! What it must never do: leave the caller's terminal raw, or take a signal meant for the thread
//! that waits for the container (the copy threads start with the forwarded signals blocked).

use std::io::{IsTerminal, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::sys::termios;

/// Errors of the terminal relay, each naming the step.
#[derive(Debug, thiserror::Error)]
pub enum TtyError {
    #[error("terminal: {what}: {source}")]
    Sys {
        what: &'static str,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("terminal: {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("terminal: the container's init sent no pty master over the console socket")]
    NoMaster,
}

fn sys(what: &'static str) -> impl FnOnce(nix::errno::Errno) -> TtyError {
    move |source| TtyError::Sys { what, source }
}

/// The runtime's console socket: `ours` receives the master, `theirs` goes into
/// `CreateOptions::console` / `ExecOptions::console`.
pub struct ConsolePair {
    ours: OwnedFd,
    pub theirs: Arc<OwnedFd>,
}

impl ConsolePair {
    pub fn new() -> Result<ConsolePair, TtyError> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(sys("create the console socketpair"))?;
        Ok(ConsolePair {
            ours,
            theirs: Arc::new(theirs),
        })
    }

    /// The pty master the init sent (already queued once create/exec has returned).
    pub fn receive_master(self) -> Result<OwnedFd, TtyError> {
        drop(self.theirs);
        let mut buf = [0u8; 4096];
        let (_, mut fds) = moat_sys::fd::recv_fds(self.ours.as_fd(), &mut buf)
            .map_err(sys("receive the pty master"))?;
        fds.pop().ok_or(TtyError::NoMaster)
    }
}

/// The caller's terminal (stdin) in raw mode while this lives: the container's pty does the line
/// discipline. Restored on drop, on every path out of the command. A stdin that is not a
/// terminal is left alone.
pub struct RawStdin {
    saved: Option<termios::Termios>,
}

impl RawStdin {
    pub fn new() -> Result<RawStdin, TtyError> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Ok(RawStdin { saved: None });
        }
        let orig = termios::tcgetattr(stdin.as_fd()).map_err(sys("read the terminal mode"))?;
        let mut raw = orig.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), termios::SetArg::TCSANOW, &raw)
            .map_err(sys("set the terminal raw"))?;
        Ok(RawStdin { saved: Some(orig) })
    }

    /// Whether stdin is a terminal (and so raw now).
    pub fn is_terminal(&self) -> bool {
        self.saved.is_some()
    }
}

impl Drop for RawStdin {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), termios::SetArg::TCSANOW, t);
        }
    }
}

/// What to write to a pty when a stdin that is not a terminal ends, `last` being the last byte
/// copied: ^D ends a line in canonical mode, and at the start of a line it reads as end-of-file.
pub fn eof_bytes(last: u8) -> &'static [u8] {
    if last == b'\n' {
        b"\x04"
    } else {
        b"\x04\x04"
    }
}

/// Copies between the caller's stdin/stdout and a pty master; restores the terminal on drop.
pub struct Relay {
    master: OwnedFd,
    /// Restored after the output has been copied (fields drop after `Drop::drop`).
    _raw: RawStdin,
    /// Copies the container's output; it ends when the last holder of the pty slave exits.
    output: Option<JoinHandle<()>>,
}

impl Relay {
    /// Start relaying `master`. Call with the forwarded signals blocked (see
    /// [`crate::block_forwarded`]) so that the copy threads inherit the mask.
    pub fn start(master: OwnedFd) -> Result<Relay, TtyError> {
        let raw = RawStdin::new()?;
        let tty = raw.is_terminal();
        let relay = Relay {
            master,
            _raw: raw,
            output: None,
        };
        relay.resize();
        let clone = |r: &Relay| -> Result<std::fs::File, TtyError> {
            r.master
                .try_clone()
                .map(std::fs::File::from)
                .map_err(|source| TtyError::Io {
                    what: "duplicate the pty master",
                    source,
                })
        };
        let (out, inp) = (clone(&relay)?, clone(&relay)?);
        let mut relay = relay;
        relay.output = Some(std::thread::spawn(move || {
            let (mut r, mut w) = (out, std::io::stdout());
            let _ = std::io::copy(&mut r, &mut w);
            let _ = w.flush();
        }));
        std::thread::spawn(move || copy_input(inp, tty));
        Ok(relay)
    }

    /// Copy the caller's terminal size to the pty (at start and on SIGWINCH). A caller without a
    /// terminal, or one of size 0x0, leaves the size the spec asked (`process.consoleSize`).
    pub fn resize(&self) {
        if let Ok(ws) = moat_sys::fd::get_winsize(std::io::stdin().as_fd()) {
            if ws.ws_row > 0 && ws.ws_col > 0 {
                let _ = moat_sys::fd::set_winsize(self.master.as_fd(), &ws);
            }
        }
    }
}

/// stdin → master. Without a terminal on stdin, its end becomes the pty's EOF character.
fn copy_input(mut pty: std::fs::File, tty: bool) {
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 8192];
    let mut last = b'\n';
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if pty.write_all(&buf[..n]).is_err() {
                    return;
                }
                last = buf[n - 1];
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if !tty {
        let _ = pty.write_all(eof_bytes(last));
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Let the output the process wrote before exiting reach our stdout (bounded wait).
        if let Some(h) = self.output.take() {
            let deadline = Instant::now() + Duration::from_secs(2);
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
        // `self._raw` restores the caller's terminal as it drops, after this.
    }
}
