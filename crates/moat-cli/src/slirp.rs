//! Rootless networking with slirp4netns (Debian package `slirp4netns`), the default network of
//! rootless `moat` as of rootless podman: a user-mode TCP/IP stack on the host side joined to a
//! `tap0` in the container's network namespace (10.0.2.100/24, gateway 10.0.2.2, DNS 10.0.2.3;
//! the host's loopback is not reachable through it), started between create and start with
//! `--configure --ready-fd`, and port forwarding (`-p`) through its API socket (`add_hostfwd`).
//!
//! The helper lives exactly as long as the process that waits for the container (`moat run` or
//! the monitor of `-d`): [`Slirp`]'s drop stops and reaps it, and `--exit-fd` makes it exit on
//! its own if that process dies first. Nothing is left behind.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::error::{CliError, Result};
use crate::meta::Port;

/// The container's address on the slirp4netns network.
pub const GUEST_ADDR: &str = "10.0.2.100";
/// The resolver slirp4netns answers on, for the container's /etc/resolv.conf.
pub const DNS: &str = "10.0.2.3";

/// A running slirp4netns; stopped and reaped on drop.
pub struct Slirp {
    child: Child,
    _exit: OwnedFd,
    api: PathBuf,
    /// The directory of the API socket, opened: a socket path is limited to 107 bytes, so the
    /// socket is reached through `/proc/self/fd/N/` (and slirp4netns, started in the directory,
    /// binds a relative name).
    dir: OwnedFd,
}

/// The API socket's name in the container's directory.
const API_SOCKET: &str = "slirp4netns.sock";

impl Drop for Slirp {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.api);
    }
}

fn net_err(what: impl std::fmt::Display) -> CliError {
    CliError::Network(format!("slirp4netns: {what}"))
}

/// Start slirp4netns for the network namespace of `pid`, with its API socket in `dir`, and
/// forward `ports`; returns once the container's `tap0` is configured.
pub fn start(pid: i32, dir: &Path, ports: &[Port]) -> Result<Slirp> {
    let api = dir.join(API_SOCKET);
    let _ = std::fs::remove_file(&api);
    let dir_fd = nix::fcntl::open(
        dir,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map(moat_sys::fd::owned)
    .map_err(CliError::sys(format!(
        "slirp4netns: open {}",
        dir.display()
    )))?;
    let (exit_rd, exit_wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(CliError::sys("slirp4netns: create a pipe"))?;
    let (ready_rd, ready_wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(CliError::sys("slirp4netns: create a pipe"))?;
    // The two descriptors slirp4netns inherits (this process is single-threaded here).
    for fd in [exit_rd.as_fd(), ready_wr.as_fd()] {
        moat_sys::fd::set_cloexec(fd, false).map_err(CliError::sys("slirp4netns: pass a pipe"))?;
    }
    let spawned = Command::new("slirp4netns")
        .args(["--configure", "--mtu=65520", "--disable-host-loopback"])
        .args(["--api-socket", API_SOCKET])
        .current_dir(dir)
        .arg(format!("--exit-fd={}", exit_rd.as_raw_fd()))
        .arg(format!("--ready-fd={}", ready_wr.as_raw_fd()))
        .arg(pid.to_string())
        .arg("tap0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    drop(exit_rd);
    drop(ready_wr);
    let mut child = spawned.map_err(|e| {
        net_err(format!(
            "start it (apt-get install slirp4netns, or use --network none|host): {e}"
        ))
    })?;
    let mut ready = [0u8; 1];
    let n = std::fs::File::from(ready_rd).read(&mut ready).unwrap_or(0);
    if n != 1 {
        let _ = child.kill();
        let out = child.wait_with_output().ok();
        let err = out
            .map(|o| {
                String::from_utf8_lossy(&o.stderr)
                    .trim()
                    .replace('\n', "; ")
            })
            .unwrap_or_default();
        return Err(net_err(format!(
            "it exited before configuring tap0 in the network namespace of process {pid}: {err}"
        )));
    }
    // Its later messages are of no use to us; nobody reads the pipe once we return.
    drop(child.stderr.take());
    let s = Slirp {
        child,
        _exit: exit_wr,
        api,
        dir: dir_fd,
    };
    for p in ports {
        s.forward(p)?;
    }
    Ok(s)
}

impl Slirp {
    /// `add_hostfwd` of one published port.
    fn forward(&self, p: &Port) -> Result<()> {
        let req = serde_json::json!({
            "execute": "add_hostfwd",
            "arguments": {
                "proto": p.protocol, "host_addr": p.host_ip, "host_port": p.host_port,
                "guest_addr": GUEST_ADDR, "guest_port": p.container_port,
            }
        });
        let what = format!(
            "publish {}:{} -> {}/{}",
            p.host_ip, p.host_port, p.container_port, p.protocol
        );
        let path = format!("/proc/self/fd/{}/{API_SOCKET}", self.dir.as_raw_fd());
        let mut sock = UnixStream::connect(&path)
            .map_err(|e| net_err(format!("{what}: connect {}: {e}", self.api.display())))?;
        let _ = sock.set_read_timeout(Some(Duration::from_secs(10)));
        sock.write_all(req.to_string().as_bytes())
            .and_then(|()| sock.shutdown(std::net::Shutdown::Write))
            .map_err(|e| net_err(format!("{what}: {e}")))?;
        let mut reply = String::new();
        let _ = sock.read_to_string(&mut reply);
        let v: serde_json::Value = serde_json::from_str(&reply).unwrap_or_default();
        if v.get("return").is_some() {
            return Ok(());
        }
        let msg = v["error"]["desc"].as_str().unwrap_or(reply.trim());
        Err(net_err(format!("{what}: {msg}")))
    }
}
