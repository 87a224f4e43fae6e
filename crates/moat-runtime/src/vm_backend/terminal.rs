//! The host half of a VM container's terminal. The pty the process uses lives in the guest (the
//! agent opens it in the container, as the namespaces backend does on the host); its bytes travel
//! over an agent port. A caller that gave a `--console-socket` (podman's conmon, containerd's
//! runc shim) gets a pty master *of the host*, exactly as from the namespaces backend: moat makes
//! a host pty pair, sends the master over the socket with SCM_RIGHTS, and relays the host slave
//! (raw, so that only the guest's line discipline acts) to and from the agent.
//!
//! A foreground command (`run`, `exec` without `-d`) relays in its own process. A detached one
//! (`create`, `run -d`, `exec -d`) leaves a **relay process**: `moat-runtime vm-console-relay`
//! (re-executed from `/proc/self/exe`, its own process group, stdio on the host slave and
//! /dev/null) that takes an agent port, claims the process's output (`Attach`, or runs the exec
//! itself so that nothing it prints is lost), reports `ok <guest pid>` on a pipe, and relays
//! until the process exits (its exit status is the process's) or the VM is gone. Each relay is
//! recorded as `relays/<pid>` (its start time) in the container's state dir, and `delete` kills
//! what is left of them.
//!
//! What it must never do: leave a relay behind a deleted container, or hold the caller's pipes
//! (a relay's stdio is the pty slave and /dev/null).

use std::fs::File;
use std::io::{BufRead, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use moat_agent_proto::Request;
use moat_container::Store;
use nix::fcntl::OFlag;
use nix::sys::termios;

use super::error::{Result, VmBackendError};
use super::follow::{follow, Local};
use super::state::{HostProc, VmState};

/// The hidden `moat-runtime` command that runs a detached relay.
pub const RELAY_COMMAND: &str = "vm-console-relay";
/// How long a detached command waits for its relay to report.
const RELAY_READY: Duration = Duration::from_secs(30);

fn sys(what: &'static str) -> impl FnOnce(nix::errno::Errno) -> VmBackendError {
    move |e| VmBackendError::Io {
        what,
        path: "(host pty)".into(),
        source: e.into(),
    }
}

/// A host pty pair: the master for the caller, the slave for the relay (raw).
pub(super) struct HostPty {
    pub master: OwnedFd,
    pub slave: File,
    pub name: String,
}

/// A pty pair of the host, its slave raw, sized `size` (width, height) when given.
pub(super) fn open_pty(size: Option<(u16, u16)>) -> Result<HostPty> {
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(sys("open /dev/ptmx"))?;
    nix::pty::grantpt(&master).map_err(sys("grantpt"))?;
    nix::pty::unlockpt(&master).map_err(sys("unlockpt"))?;
    let name = nix::pty::ptsname_r(&master).map_err(sys("ptsname"))?;
    let slave = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&name)
    }
    .map_err(VmBackendError::io("open", &name))?;
    let mut raw = termios::tcgetattr(slave.as_fd()).map_err(sys("read the pty mode"))?;
    termios::cfmakeraw(&mut raw);
    termios::tcsetattr(slave.as_fd(), termios::SetArg::TCSANOW, &raw)
        .map_err(sys("set the pty raw"))?;
    if let Some((w, h)) = size.filter(|(w, h)| *w > 0 && *h > 0) {
        let ws = nix::pty::Winsize {
            ws_row: h,
            ws_col: w,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        moat_sys::fd::set_winsize(master.as_fd(), &ws).map_err(sys("set the pty size"))?;
    }
    let master = master
        .as_fd()
        .try_clone_to_owned()
        .map_err(VmBackendError::io("duplicate", &name))?;
    Ok(HostPty {
        master,
        slave,
        name,
    })
}

/// Send the master to the caller's console socket (the pty's name as payload, as runc does),
/// then close our copy.
pub(super) fn send_master(socket: &Path, pty: HostPty) -> Result<File> {
    let conn = std::os::unix::net::UnixStream::connect(socket)
        .map_err(VmBackendError::io("connect to the console socket", socket))?;
    moat_sys::fd::send_fds(conn.as_fd(), pty.name.as_bytes(), &[pty.master.as_raw_fd()]).map_err(
        |e| VmBackendError::Io {
            what: "send the pty master to the console socket",
            path: socket.into(),
            source: e.into(),
        },
    )?;
    Ok(pty.slave)
}

/// The process's `consoleSize` (width, height).
pub(super) fn console_size(process: &oci_spec::runtime::Process) -> Option<(u16, u16)> {
    process
        .console_size()
        .as_ref()
        .map(|b| (b.width() as u16, b.height() as u16))
}

/// Follow a process with a terminal in the foreground: on a host pty whose master goes to
/// `console_socket`, else on our own terminal (or stdio), forwarding our stdin when `stdin`.
pub(super) fn follow_terminal(
    agent: &mut moat_vm::AgentClient,
    id: &str,
    exec_id: Option<&str>,
    console_socket: Option<&Path>,
    size: Option<(u16, u16)>,
    stdin: bool,
) -> Result<moat_agent_proto::ExitStatus> {
    let local = match console_socket {
        Some(sock) => Local::HostPty {
            slave: send_master(sock, open_pty(size)?)?,
            foreground: true,
            controlling: false,
        },
        None => Local::Terminal { stdin },
    };
    follow(agent, id, exec_id, local)
}

/// What a detached relay serves.
pub(super) enum RelayJob<'a> {
    /// The init of a created container (claimed with `Attach`).
    Init,
    /// A new process, run by the relay itself (`process_json`).
    Exec {
        exec_id: &'a str,
        process_json: &'a str,
    },
}

/// Start a detached relay for container `id` on a new host pty whose master goes to
/// `console_socket`; returns the relay's host pid and the guest pid of the process.
pub(super) fn spawn_relay(
    store: &Store,
    id: &str,
    job: RelayJob<'_>,
    console_socket: &Path,
    size: Option<(u16, u16)>,
) -> Result<(i32, i32)> {
    let pty = open_pty(size)?;
    let dir = store.dir(id).join("relays");
    std::fs::create_dir_all(&dir).map_err(VmBackendError::io("create", &dir))?;
    let mut cmd = helper_command(store, RELAY_COMMAND, id);
    let mut process_file = None;
    if let RelayJob::Exec {
        exec_id,
        process_json,
    } = job
    {
        let f = store.dir(id).join(format!("relay-{exec_id}.json"));
        std::fs::write(&f, process_json).map_err(VmBackendError::io("write", &f))?;
        cmd.args(["--exec-id", exec_id]).arg("--process").arg(&f);
        process_file = Some(f);
    }
    let slave = pty
        .slave
        .try_clone()
        .map_err(VmBackendError::io("duplicate", &pty.name))?;
    cmd.stdin(Stdio::from(slave))
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // A session of its own from the start: the caller's terminal signals are never the relay's,
    // and the host pty becomes its terminal (`relay_main`).
    moat_sys::process::new_session_on_spawn(&mut cmd);
    let mut child = cmd.spawn().map_err(|source| VmBackendError::Io {
        what: "start the terminal relay of",
        path: id.into(),
        source,
    })?;
    let pid = child.id() as i32;
    let report = child.stdout.take().map(|out| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line);
        });
        rx.recv_timeout(RELAY_READY).unwrap_or_default()
    });
    if let Some(f) = process_file {
        let _ = std::fs::remove_file(f);
    }
    let line = report.unwrap_or_default();
    let Some(guest_pid) = line
        .strip_prefix("ok ")
        .and_then(|p| p.trim().parse::<i32>().ok())
    else {
        let _ = child.kill();
        let _ = child.wait();
        let why = line.trim().strip_prefix("error: ").unwrap_or(line.trim());
        return Err(VmBackendError::Terminal {
            id: id.into(),
            reason: if why.is_empty() {
                "its relay exited without a report".into()
            } else {
                format!("its relay failed: {why}")
            },
        });
    };
    if let Some(p) = HostProc::of(pid) {
        let f = dir.join(pid.to_string());
        std::fs::write(&f, p.start_time.to_string()).map_err(VmBackendError::io("write", &f))?;
    }
    if let Err(e) = send_master(console_socket, pty) {
        // Nobody will read this terminal: the relay goes (and, for an exec, so does its
        // connection: the process's stdin closes).
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    Ok((pid, guest_pid))
}

/// `moat-runtime --root ROOT COMMAND ID` of this very binary: a helper process of container
/// `id` (its terminal relay, its reclaim helper).
pub(super) fn helper_command(store: &Store, command: &str, id: &str) -> Command {
    let mut cmd = Command::new("/proc/self/exe");
    if let Some(arg0) = std::env::args_os().next() {
        use std::os::unix::process::CommandExt;
        cmd.arg0(arg0);
    }
    cmd.arg("--root").arg(&store.root).arg(command).arg(id);
    cmd
}

/// Kill the relays of container `id` still alive (its VM is gone or going).
pub(super) fn kill_relays(store: &Store, id: &str) {
    let Ok(rd) = std::fs::read_dir(store.dir(id).join("relays")) else {
        return;
    };
    for e in rd.flatten() {
        let pid = e.file_name().to_string_lossy().parse::<i32>().ok();
        let start = std::fs::read_to_string(e.path())
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        if let (Some(pid), Some(start_time)) = (pid, start) {
            let p = HostProc { pid, start_time };
            // It ends by itself once the agent connection closes; make sure.
            if !p.wait_gone(Duration::from_millis(300)) {
                p.kill();
                p.wait_gone(Duration::from_secs(2));
            }
        }
    }
}

/// `moat-runtime vm-console-relay ID [--exec-id E --process FILE]`: the detached relay's body
/// (see the module doc). Its stdin is the host pty's slave, its stdout the report pipe.
pub fn relay_main(store: &Store, id: &str, exec: Option<(&str, &Path)>) -> ExitCode {
    let report = |line: &str| {
        let mut out = std::io::stdout();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    // A session of its own, the host pty's slave (stdin) its controlling terminal: a resize of
    // the caller's master comes as SIGWINCH (no polling), the master's close as SIGHUP.
    // Its hangup and resizes are blocked first (`follow` reads them from a signalfd): a master
    // closed before that must not kill the relay.
    let mut terminal_signals = nix::sys::signal::SigSet::empty();
    terminal_signals.add(nix::sys::signal::Signal::SIGHUP);
    terminal_signals.add(nix::sys::signal::Signal::SIGWINCH);
    // (It leads its session already: `spawn_relay` made it so before exec.)
    let controlling = terminal_signals.thread_block().is_ok()
        && moat_sys::fd::set_controlling_tty(std::io::stdin().as_fd()).is_ok();
    let started = (|| -> Result<(moat_vm::AgentClient, i32, File)> {
        let slave = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map(File::from)
            .map_err(VmBackendError::io("duplicate", "the host pty slave"))?;
        let st = VmState::load(store, id)?;
        let mut agent = st.attach()?;
        let pid = match exec {
            None => {
                agent
                    .request(Request::Attach {
                        container_id: id.into(),
                        exec_id: None,
                    })
                    .map_err(VmBackendError::vm(format!("attach to container {id}")))?;
                // The init's relay lives as long as the sandbox: it gives the sandbox's cold
                // pages back while it idles.
                moat_vm::reclaim::spawn(st.qemu_pid as u32);
                0
            }
            Some((exec_id, file)) => {
                let json =
                    std::fs::read_to_string(file).map_err(VmBackendError::io("read", file))?;
                agent
                    .exec(id, exec_id, &json, true)
                    .map_err(VmBackendError::vm(format!("exec in container {id}")))?
            }
        };
        Ok((agent, pid, slave))
    })();
    let (mut agent, pid, slave) = match started {
        Ok(s) => s,
        Err(e) => {
            report(&format!("error: {e}"));
            return ExitCode::from(125);
        }
    };
    report(&format!("ok {pid}"));
    // Nothing of the caller's stays open here: stdio becomes /dev/null (the slave is `slave`).
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..=2 {
            let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
        }
    }
    let local = Local::HostPty {
        slave,
        foreground: false,
        controlling,
    };
    match follow(&mut agent, id, exec.map(|(e, _)| e), local) {
        Ok(status) => ExitCode::from(status.as_shell_code().clamp(0, 255) as u8),
        Err(_) => ExitCode::from(255),
    }
}
