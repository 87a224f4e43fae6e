//! A foreground process of a VM container (`run`'s init, a non-detached `exec`): copy its output
//! to our stdout/stderr, our stdin to it (chunk by chunk, each answered by the agent before the
//! next is sent, then `CloseStdin` at EOF), and the signals a foreground `run` forwards
//! ([`crate::FORWARDED`]) through the agent, until it exits.
//!
//! Our stdin is read by a helper thread (a blocking read works for every kind of stdin: pipe,
//! file, terminal); the signals are blocked before it starts, so it never takes one.

use std::io::{Read, Write};
use std::sync::mpsc::{sync_channel, Receiver, TryRecvError};
use std::time::Duration;

use moat_agent_proto::{ExitStatus, GuestMessage, Request, Stream};
use moat_vm::AgentClient;

use super::error::{Result, VmBackendError};

/// Bytes per `Stdin` request (JSON carries each byte as up to 4 characters).
const STDIN_CHUNK: usize = 16 * 1024;

/// Follow process `exec_id` (`None`: the init) of container `id`; with `stdin`, forward ours.
pub(super) fn follow(
    agent: &mut AgentClient,
    id: &str,
    exec_id: Option<&str>,
    stdin: bool,
) -> Result<ExitStatus> {
    use nix::sys::signal::SigSet;
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    let mut set = SigSet::empty();
    for s in crate::FORWARDED {
        set.add(*s);
    }
    let sys = |what: &'static str| {
        move |e: nix::errno::Errno| VmBackendError::Io {
            what,
            path: "(signals)".into(),
            source: e.into(),
        }
    };
    set.thread_block().map_err(sys("block signals"))?;
    let sfd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(sys("signalfd"))?;
    let mut input = stdin.then(read_stdin);
    let mut pending: Option<u64> = None;
    let owner = exec_id.map(String::from);
    let vm = |what: &str| VmBackendError::vm(format!("{what} of container {id}"));
    loop {
        while let Ok(Some(si)) = sfd.read_signal() {
            // The process may be exiting: a refused kill is not an error.
            let _ = agent.kill(id, exec_id, si.ssi_signo as i32, false);
        }
        if pending.is_none() {
            if let Some(rx) = &input {
                match rx.try_recv() {
                    Ok(data) => {
                        pending = Some(
                            agent
                                .send(Request::Stdin {
                                    container_id: id.into(),
                                    exec_id: owner.clone(),
                                    data,
                                })
                                .map_err(vm("forward stdin"))?,
                        );
                    }
                    Err(TryRecvError::Empty) => {}
                    Err(TryRecvError::Disconnected) => {
                        input = None;
                        // Answered later; a process that already exited makes it an error
                        // nobody needs.
                        agent
                            .send(Request::CloseStdin {
                                container_id: id.into(),
                                exec_id: owner.clone(),
                            })
                            .map_err(vm("close stdin"))?;
                    }
                }
            }
        }
        let wait = if input.is_some() && pending.is_none() {
            Duration::from_millis(10)
        } else {
            Duration::from_millis(50)
        };
        let Some(m) = agent.next_event(wait).map_err(vm("follow"))? else {
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
                    Stream::Stdout => std::io::stdout().write_all(&data),
                    Stream::Stderr => std::io::stderr().write_all(&data),
                };
            }
            GuestMessage::Exited {
                container_id,
                exec_id: e,
                status,
            } if container_id == id && e == owner => {
                let _ = std::io::stdout().flush();
                return Ok(status);
            }
            _ => {}
        }
    }
}

/// Our stdin in chunks from a helper thread; the channel closes at EOF (or a read error).
fn read_stdin() -> Receiver<Vec<u8>> {
    let (tx, rx) = sync_channel::<Vec<u8>>(1);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; STDIN_CHUNK];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    });
    rx
}
