//! A foreground process of a VM container (`run`'s init, a non-detached `exec`, or the process
//! a terminal relay serves): copy its output to the local end, the local end's input to it
//! (chunk by chunk, each answered by the agent before the next is sent), and, for a foreground
//! command, the signals a foreground `run` forwards ([`crate::FORWARDED`]) through the agent,
//! until it exits.
//!
//! The local end ([`Local`]) is our stdio (pipes or files; the end of stdin is `CloseStdin`), a
//! terminal on our stdio (raw while it lasts, its size sent as `Resize` at start and on
//! SIGWINCH, a piped stdin's end sent as the pty's EOF character, as `moat_runtime::tty` does for
//! the namespaces backend), or the slave of a host pty whose master went to a console socket
//! (its size is sent as `Resize` when it changes: a detached relay has the slave as its
//! controlling terminal and gets SIGWINCH; a foreground command looks at it every 250 ms). Input
//! is read by a helper thread (a blocking read works for every kind of input) that wakes the loop
//! through a pipe; the signals are blocked before it starts, so it never takes one.
//!
//! The loop sleeps in `poll` on the agent connection, the signalfd and the input pipe: a process
//! that prints nothing costs no wakeups (it used to look every 10-50 ms).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::mpsc::{sync_channel, Receiver, TryRecvError};
use std::time::Duration;

use moat_agent_proto::{ExitStatus, GuestMessage, Request, Stream};
use moat_vm::AgentClient;
use nix::fcntl::OFlag;
use nix::sys::signal::Signal;

use super::error::{Result, VmBackendError};

/// Bytes per `Stdin` request (JSON carries each byte as up to 4 characters).
const STDIN_CHUNK: usize = 16 * 1024;

/// Where a followed process's stdio goes.
pub(super) enum Local {
    /// Our stdout/stderr; with `stdin`, our stdin is forwarded (then `CloseStdin`).
    Stdio { stdin: bool },
    /// The process has a terminal, shown on our stdio; with `stdin`, our stdin is forwarded.
    Terminal { stdin: bool },
    /// The process has a terminal, relayed to the slave of a host pty whose master the caller
    /// got over its console socket. `foreground`: we are the command the caller waits for (we
    /// forward its signals); else a detached relay (the caller's signals are not ours).
    /// `controlling`: the slave is our controlling terminal, so a resize comes as SIGWINCH and
    /// the master's close as SIGHUP.
    HostPty {
        slave: File,
        foreground: bool,
        controlling: bool,
    },
}

/// Follow process `exec_id` (`None`: the init) of container `id` until it exits.
pub(super) fn follow(
    agent: &mut AgentClient,
    id: &str,
    exec_id: Option<&str>,
    local: Local,
) -> Result<ExitStatus> {
    use nix::sys::signal::SigSet;
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    let sys = |what: &'static str| {
        move |e: nix::errno::Errno| VmBackendError::Io {
            what,
            path: "(signals)".into(),
            source: e.into(),
        }
    };
    let forward_signals = !matches!(
        local,
        Local::HostPty {
            foreground: false,
            ..
        }
    );
    let controlling = matches!(
        local,
        Local::HostPty {
            controlling: true,
            ..
        }
    );
    let mut set = SigSet::empty();
    if forward_signals {
        for s in crate::FORWARDED {
            set.add(*s);
        }
    }
    if controlling {
        // Our terminal's: a resize, and the hangup when its master closes (input ends then).
        set.add(Signal::SIGWINCH);
        set.add(Signal::SIGHUP);
    }
    set.thread_block().map_err(sys("block signals"))?;
    let sfd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(sys("signalfd"))?;
    // Raw mode (restored on drop) before the input thread reads anything.
    let raw = match &local {
        Local::Terminal { .. } => {
            Some(
                crate::tty::RawStdin::new().map_err(|e| VmBackendError::Terminal {
                    id: id.into(),
                    reason: e.to_string(),
                })?,
            )
        }
        _ => None,
    };
    let (wake_r, wake_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
        .map_err(sys("make the input pipe"))?;
    let wake_w = std::sync::Arc::new(wake_w);
    let read_input = |src: Box<dyn Read + Send>| read_input(src, wake_w.clone());
    let (mut input, mut out, size_of): (Option<Receiver<Input>>, Box<dyn Write>, Option<File>) =
        match local {
            Local::Stdio { stdin } => (
                stdin.then(|| read_input(Box::new(std::io::stdin()))),
                Box::new(std::io::stdout()),
                None,
            ),
            Local::Terminal { stdin } => (
                stdin.then(|| read_input(Box::new(std::io::stdin()))),
                Box::new(std::io::stdout()),
                dup_stdin(),
            ),
            Local::HostPty { slave, .. } => {
                let dup = |f: &File| {
                    f.try_clone()
                        .map_err(VmBackendError::io("duplicate", "the host pty slave"))
                };
                let (r, w) = (dup(&slave)?, dup(&slave)?);
                (Some(read_input(Box::new(r))), Box::new(w), Some(slave))
            }
        };
    let terminal = size_of.is_some();
    // A stdin that is not a terminal ends with the pty's EOF character, not a closed pipe.
    let eof_as_char = matches!(&raw, Some(r) if !r.is_terminal());
    let pty_input = size_of.is_some() && raw.is_none();
    let mut last_size = None;
    let mut last_byte = b'\n';
    let mut pending: Option<u64> = None;
    let owner = exec_id.map(String::from);
    let vm = |what: &str| VmBackendError::vm(format!("{what} of container {id}"));
    let resize = |agent: &mut AgentClient, last: &mut Option<(u16, u16)>| -> Result<()> {
        let Some(f) = &size_of else { return Ok(()) };
        let Ok(ws) = moat_sys::fd::get_winsize(f.as_fd()) else {
            return Ok(());
        };
        let size = (ws.ws_col, ws.ws_row);
        // 0x0 (a terminal nobody sized) leaves the spec's consoleSize.
        if size.0 == 0 || size.1 == 0 || *last == Some(size) {
            return Ok(());
        }
        *last = Some(size);
        agent
            .send(Request::Resize {
                container_id: id.into(),
                exec_id: owner.clone(),
                width: size.0,
                height: size.1,
            })
            .map(drop)
            .map_err(vm("resize the terminal"))
    };
    resize(agent, &mut last_size)?;
    // A host pty that is not our terminal sends no SIGWINCH: its size is looked at this often.
    let size_every = (pty_input && !controlling).then_some(Duration::from_millis(250));
    let mut sized_at = std::time::Instant::now();
    loop {
        while let Ok(Some(si)) = sfd.read_signal() {
            let sig = si.ssi_signo as i32;
            if terminal && sig == Signal::SIGWINCH as i32 {
                resize(agent, &mut last_size)?;
                continue;
            }
            if controlling && sig == Signal::SIGHUP as i32 {
                // Our terminal's master closed: the input thread sees the end too.
                continue;
            }
            // The process may be exiting: a refused kill is not an error.
            let _ = agent.kill(id, exec_id, sig, false);
        }
        if size_every.is_some_and(|every| sized_at.elapsed() >= every) {
            resize(agent, &mut last_size)?;
            sized_at = std::time::Instant::now();
        }
        if pending.is_none() {
            if let Some(rx) = &input {
                let next = match rx.try_recv() {
                    Ok(Input::Data(data)) => {
                        last_byte = data.last().copied().unwrap_or(last_byte);
                        Some(Request::Stdin {
                            container_id: id.into(),
                            exec_id: owner.clone(),
                            data,
                        })
                    }
                    Ok(Input::End) | Err(TryRecvError::Disconnected) => {
                        input = None;
                        if pty_input {
                            // The caller closed the pty's master: hang up, as the kernel
                            // would for a process whose terminal's master closes.
                            let _ = agent.send(Request::Kill {
                                container_id: id.into(),
                                exec_id: owner.clone(),
                                signal: Signal::SIGHUP as i32,
                                all: false,
                            });
                            None
                        } else if terminal {
                            eof_as_char.then(|| Request::Stdin {
                                container_id: id.into(),
                                exec_id: owner.clone(),
                                data: crate::tty::eof_bytes(last_byte).to_vec(),
                            })
                        } else {
                            // Answered later; a process that already exited makes it an
                            // error nobody needs.
                            Some(Request::CloseStdin {
                                container_id: id.into(),
                                exec_id: owner.clone(),
                            })
                        }
                    }
                    Err(TryRecvError::Empty) => None,
                };
                if let Some(req) = next {
                    let stdin = matches!(req, Request::Stdin { .. });
                    let rid = agent.send(req).map_err(vm("forward stdin"))?;
                    if stdin {
                        pending = Some(rid);
                    }
                }
            }
        }
        let Some(m) = agent.try_next_event().map_err(vm("follow"))? else {
            // Nothing received: sleep until the agent, a signal or (when it may be sent now)
            // input wakes us.
            use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
            let want_input = input.is_some() && pending.is_none();
            let mut fds = vec![
                PollFd::new(agent.as_fd(), PollFlags::POLLIN),
                PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
            ];
            if want_input {
                fds.push(PollFd::new(wake_r.as_fd(), PollFlags::POLLIN));
            }
            let timeout = size_every.map_or(PollTimeout::NONE, |d| {
                PollTimeout::try_from(d).unwrap_or(PollTimeout::MAX)
            });
            match poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(sys("poll")(e)),
            }
            if want_input {
                let _ = nix::unistd::read(wake_r.as_raw_fd(), &mut [0u8; 64]);
            }
            continue;
        };
        match m {
            GuestMessage::Response { id: rid, result } if Some(rid) == pending => {
                pending = None;
                if result.is_err() {
                    // The process closed its stdin or exited: stop forwarding.
                    input = None;
                }
            }
            GuestMessage::Output {
                container_id,
                exec_id: e,
                stream,
                data,
            } if container_id == id && e == owner => {
                let _ = match stream {
                    Stream::Stdout => out.write_all(&data).and_then(|()| out.flush()),
                    Stream::Stderr => std::io::stderr().write_all(&data),
                };
            }
            GuestMessage::Exited {
                container_id,
                exec_id: e,
                status,
            } if container_id == id && e == owner => {
                let _ = out.flush();
                return Ok(status);
            }
            _ => {}
        }
    }
}

/// What the input thread read.
enum Input {
    Data(Vec<u8>),
    /// End of file, or a read error (EIO: a pty whose master was closed).
    End,
}

/// A copy of our stdin (for its terminal size), if it is open.
fn dup_stdin() -> Option<File> {
    std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .map(File::from)
}

/// `src` in chunks from a helper thread, then [`Input::End`]; a byte on `wake` after each.
fn read_input(
    mut src: Box<dyn Read + Send>,
    wake: std::sync::Arc<std::os::fd::OwnedFd>,
) -> Receiver<Input> {
    let (tx, rx) = sync_channel::<Input>(1);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; STDIN_CHUNK];
        let send = |i: Input| {
            let sent = tx.send(i).is_ok();
            // Full (EAGAIN): a wakeup is pending already.
            let _ = nix::unistd::write(&*wake, &[1]);
            sent
        };
        loop {
            match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if !send(Input::Data(buf[..n].to_vec())) {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        send(Input::End);
    });
    rx
}
