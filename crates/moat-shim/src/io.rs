//! The container's stdio as containerd hands it to a shim: fifo paths. Without a terminal the
//! fifos are opened here and passed to the container as its descriptors 0-2; with a terminal the
//! shim receives the pty master on a console socket and copies between it and the fifos.
//!
//! Console sockets live in a private directory of their own under [`CONSOLE_BASE`] (mode 0700, a
//! short unique name), never in the bundle: a unix socket path must fit in `sun_path` (108 bytes),
//! and CRI bundles (`.../io.containerd.runtime.v2.task/k8s.io/<64-hex id>/`) already take most of
//! that. The directory is removed once the runtime has handed over the pty master.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::stat::Mode;

fn open(path: &str, flags: OFlag) -> std::io::Result<OwnedFd> {
    let fd = nix::fcntl::open(Path::new(path), flags | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(std::io::Error::from)?;
    Ok(moat_sys::fd::owned(fd))
}

/// Open the stdio fifos (or /dev/null for an empty path) for the container.
pub fn open_stdio(stdin: &str, stdout: &str, stderr: &str) -> std::io::Result<[OwnedFd; 3]> {
    let i = if stdin.is_empty() {
        open("/dev/null", OFlag::O_RDONLY)?
    } else {
        // Non-blocking open does not wait for a writer; reads must block afterwards.
        let fd = open(stdin, OFlag::O_RDONLY | OFlag::O_NONBLOCK)?;
        fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            FcntlArg::F_SETFL(OFlag::empty()),
        )
        .map_err(std::io::Error::from)?;
        fd
    };
    // O_RDWR on a fifo never blocks waiting for the reader (containerd opens it on its side).
    let out = |p: &str| {
        if p.is_empty() {
            open("/dev/null", OFlag::O_WRONLY)
        } else {
            open(p, OFlag::O_RDWR)
        }
    };
    Ok([i, out(stdout)?, out(stderr)?])
}

/// Where the shim makes the private directories of its console sockets.
pub const CONSOLE_BASE: &str = "/run/moat-shim";

/// A console socket: the path to give the runtime, and the pty master once received.
pub struct Console {
    pub path: PathBuf,
    /// The private directory holding `path`, removed with it.
    dir: PathBuf,
    pub master: Arc<Mutex<Option<File>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Console {
    /// Listen on a new socket in a private directory under `base`; in the background receive the
    /// master and start copying to/from the fifos.
    pub fn listen(base: &Path, stdin: String, stdout: String) -> std::io::Result<Console> {
        std::fs::create_dir_all(base)?;
        // mkdtemp(3) makes the directory 0700: only root can reach the socket.
        let dir = nix::unistd::mkdtemp(&base.join("con-XXXXXX")).map_err(std::io::Error::from)?;
        let path = dir.join("sock");
        let listener = match UnixListener::bind(&path) {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                return Err(e);
            }
        };
        let master: Arc<Mutex<Option<File>>> = Arc::default();
        let m = master.clone();
        let handle = std::thread::spawn(move || {
            let Ok((conn, _)) = listener.accept() else {
                return;
            };
            let mut buf = [0u8; 4096];
            let Ok((_, mut fds)) =
                moat_sys::fd::recv_fds(std::os::fd::AsFd::as_fd(&conn), &mut buf)
            else {
                return;
            };
            let Some(fd) = fds.pop() else { return };
            let file = File::from(fd);
            let (Ok(reader), Ok(writer)) = (file.try_clone(), file.try_clone()) else {
                return;
            };
            *m.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
            if !stdout.is_empty() {
                std::thread::spawn(move || {
                    if let Ok(out) = std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(&stdout)
                    {
                        let (mut r, mut w) = (reader, out);
                        let _ = std::io::copy(&mut r, &mut w);
                    }
                });
            }
            if !stdin.is_empty() {
                std::thread::spawn(move || {
                    if let Ok(inp) = File::open(&stdin) {
                        let (mut r, mut w) = (inp, writer);
                        let _ = std::io::copy(&mut r, &mut w);
                    }
                });
            }
        });
        Ok(Console {
            path,
            dir,
            master,
            handle: Some(handle),
        })
    }

    /// Wait until the master has been received (the runtime sends it during create).
    pub fn received(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.remove_socket();
    }

    fn remove_socket(&self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }

    /// Give up (create failed): unblock the accepting thread.
    pub fn abort(&mut self) {
        let _ = std::os::unix::net::UnixStream::connect(&self.path);
        self.received();
    }

    pub fn resize(&self, width: u32, height: u32) -> std::io::Result<()> {
        let guard = self.master.lock().unwrap_or_else(|e| e.into_inner());
        let Some(f) = guard.as_ref() else {
            return Ok(());
        };
        let ws = nix::pty::Winsize {
            ws_row: height as u16,
            ws_col: width as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        moat_sys::fd::set_winsize(std::os::fd::AsFd::as_fd(f), &ws).map_err(std::io::Error::from)
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.remove_socket();
    }
}
