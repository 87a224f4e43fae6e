//! User-mode networks of rootless containers, each a helper process on the host side of the
//! container's network namespace, started between create and start:
//!
//! - **slirp4netns** (Debian package `slirp4netns`), the default as in rootless podman 4: a
//!   user-mode TCP/IP stack joined to a `tap0` in the container (10.0.2.100/24, gateway
//!   10.0.2.2, DNS 10.0.2.3; the host's loopback is not reachable through it), started with
//!   `--configure --ready-fd`; port forwarding (`-p`) through its API socket (`add_hostfwd`).
//!   `--exit-fd` makes it exit on its own if the process holding it dies.
//! - **pasta** (package `passt`), rootless podman 5's default: the container's interface gets
//!   the host's addresses and routes (`--config-net`), `-p` becomes its `-t`/`-u` forwards;
//!   it daemonizes once the namespace is configured (its pid in a file) and quits when the
//!   namespace goes.
//!
//! Each helper lives exactly as long as the process that waits for the container (`moat run`
//! or the monitor of `-d`): [`UserNet`]'s drop stops it and waits until it is gone. Nothing is
//! left behind.

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

/// A running user-mode network helper; stopped on drop (held for that only).
#[allow(dead_code)]
pub enum UserNet {
    Slirp(Slirp),
    Pasta(Pasta),
}

/// Start the helper of network `mode` (`slirp4netns` or `pasta`) for the network namespace of
/// `pid`, with its files in `dir`, forwarding `ports`.
pub fn start(mode: &str, pid: i32, dir: &Path, ports: &[Port]) -> Result<UserNet> {
    match mode {
        "pasta" => start_pasta(pid, dir, ports).map(UserNet::Pasta),
        _ => start_slirp(pid, dir, ports).map(UserNet::Slirp),
    }
}

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
fn start_slirp(pid: i32, dir: &Path, ports: &[Port]) -> Result<Slirp> {
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

/// A running pasta (daemonized: not our child); stopped on drop.
pub struct Pasta {
    pid: nix::unistd::Pid,
    pid_file: PathBuf,
}

impl Drop for Pasta {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGTERM);
        // Reparented to init: wait until it has left (or is a zombie init has yet to reap).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline && alive(self.pid.as_raw()) {
            std::thread::sleep(Duration::from_millis(10));
        }
        if alive(self.pid.as_raw()) {
            let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

/// Whether process `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

/// pasta's `-t`/`-u` spec of one published port: `[ADDR/]HOSTPORT:CTRPORT`.
fn pasta_port(p: &Port) -> String {
    if p.host_ip == "0.0.0.0" {
        format!("{}:{}", p.host_port, p.container_port)
    } else {
        format!("{}/{}:{}", p.host_ip, p.host_port, p.container_port)
    }
}

fn start_pasta(pid: i32, dir: &Path, ports: &[Port]) -> Result<Pasta> {
    let pid_file = dir.join("pasta.pid");
    // pasta drops its capabilities before it opens the namespace, and the container's init is
    // not dumpable yet: it gets the namespace as a descriptor opened here, by its /proc/self
    // path (this process is single-threaded, so no other child inherits it).
    let ns = format!("/proc/{pid}/ns/net");
    let netns = std::fs::File::open(&ns).map_err(|e| pasta_err(format!("open {ns}: {e}")))?;
    moat_sys::fd::set_cloexec(netns.as_fd(), false)
        .map_err(CliError::sys("pasta: pass the network namespace"))?;
    let mut cmd = Command::new("pasta");
    cmd.args(["--config-net", "--quiet", "--netns-only", "--pid"])
        .arg(&pid_file)
        .arg("--netns")
        .arg(format!("/proc/self/fd/{}", netns.as_raw_fd()));
    let mut forwards = |flag: &str, proto: &str| {
        let specs: Vec<String> = ports
            .iter()
            .filter(|p| p.protocol == proto)
            .map(pasta_port)
            .collect();
        if specs.is_empty() {
            cmd.args([flag, "none"]);
        }
        for s in specs {
            cmd.args([flag, &s]);
        }
    };
    forwards("-t", "tcp");
    forwards("-u", "udp");
    // Nothing from the container's side reaches the host's ports.
    cmd.args(["-T", "none", "-U", "none"]);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| pasta_err(format!("start it (apt-get install passt): {e}")))?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().replace('\n', "; ");
    if !out.status.success() {
        return Err(pasta_err(format!(
            "configure the network namespace of process {pid} ({}): {} {}",
            out.status,
            text(&out.stderr),
            text(&out.stdout)
        )));
    }
    let daemon = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .ok_or_else(|| pasta_err(format!("no pid in {}", pid_file.display())))?;
    Ok(Pasta {
        pid: nix::unistd::Pid::from_raw(daemon),
        pid_file,
    })
}

fn pasta_err(what: impl std::fmt::Display) -> CliError {
    CliError::Network(format!("pasta: {what}"))
}
