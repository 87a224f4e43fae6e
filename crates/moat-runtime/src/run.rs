//! `moat-runtime run`: create and start a container in one call, forward signals to its init,
//! wait for it, delete it, and exit with its status (128+N when killed by signal N), as runc does.
//! With `process.terminal` and no `--console-socket`, the runtime holds the console itself and
//! relays it to its own stdin/stdout ([`moat_runtime::tty`]); detached, that is refused as runc
//! refuses it ([`check_detached_terminal`]).

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use moat_container::Store;
use moat_runtime::tty::{ConsolePair, Relay};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::log::Logger;

/// runc's refusal of a terminal nobody would read: detached, without a console socket.
pub fn check_detached_terminal(terminal: bool, console_socket: bool) -> Result<()> {
    if terminal && !console_socket {
        bail!("cannot allocate tty if moat-runtime will detach without setting console socket");
    }
    Ok(())
}

/// Whether the bundle's process asks for a terminal.
pub fn bundle_terminal(bundle: &std::path::Path) -> Result<bool> {
    // Only `process.terminal`: the whole config is parsed and validated once, by create.
    #[derive(serde::Deserialize)]
    struct Config {
        process: Option<Process>,
    }
    #[derive(serde::Deserialize)]
    struct Process {
        terminal: Option<bool>,
    }
    // A missing or broken config is create's to report, with the field named.
    let Ok(text) = std::fs::read(bundle.join("config.json")) else {
        return Ok(false);
    };
    Ok(serde_json::from_slice::<Config>(&text)
        .ok()
        .and_then(|c| c.process?.terminal)
        .unwrap_or(false))
}

pub fn run(
    store: &Store,
    opts: &moat_container::CreateOptions,
    detach: bool,
    keep: bool,
    log: &mut Logger,
) -> Result<ExitCode> {
    let terminal = opts.console_socket.is_none()
        && bundle_terminal(&opts.bundle).with_context(|| format!("run container {}", opts.id))?;
    if detach {
        check_detached_terminal(terminal, opts.console_socket.is_some())?;
    }
    let mut opts = opts.clone();
    let pair = if terminal {
        let pair = ConsolePair::new()?;
        opts.console = Some(pair.theirs.clone());
        log.debug("terminal: relaying the container's pty (no --console-socket)");
        Some(pair)
    } else {
        None
    };
    let created = moat_container::create(store, &opts)
        .with_context(|| format!("create container {}", opts.id))?;
    for w in &created.warnings {
        log.warn(w);
    }
    for n in &created.notes {
        log.debug(n);
    }
    // Only the pair holds the socket now: a missing master reads as end-of-file, not a hang.
    opts.console = None;
    let opts = &opts;
    let relay = match pair.map(|p| -> Result<Relay> {
        moat_runtime::block_forwarded().context("block signals")?;
        Ok(Relay::start(p.receive_master()?)?)
    }) {
        Some(Err(e)) => {
            let _ = moat_container::delete::delete(store, &opts.id, true);
            return Err(e).with_context(|| format!("run container {}", opts.id));
        }
        Some(Ok(r)) => Some(r),
        None => None,
    };
    if let Err(e) = moat_container::start::start(store, &opts.id) {
        let _ = moat_container::delete::delete(store, &opts.id, true);
        return Err(e).with_context(|| format!("start container {}", opts.id));
    }
    if detach {
        return Ok(ExitCode::SUCCESS);
    }
    let status = wait_forwarding(Pid::from_raw(created.pid), log, relay.as_ref());
    drop(relay);
    let status = status?;
    if !keep {
        moat_container::delete::delete(store, &opts.id, true)
            .with_context(|| format!("delete container {}", opts.id))?;
    }
    Ok(ExitCode::from(status.clamp(0, 255) as u8))
}

/// Wait for our child `pid` while forwarding the usual terminal and job-control signals to it;
/// returns its exit status, 128+N when killed by signal N. With a terminal `relay`, SIGWINCH
/// resizes the pty instead (the kernel then signals the pty's foreground process group).
pub fn wait_forwarding(pid: Pid, log: &mut Logger, relay: Option<&Relay>) -> Result<i32> {
    let set = moat_runtime::block_forwarded().context("block signals")?;
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) => {}
            Err(nix::errno::Errno::ECHILD) => return Ok(255),
            Err(e) => return Err(e).context("wait for the container process"),
        }
        match set.wait() {
            Ok(Signal::SIGCHLD) => {}
            Ok(Signal::SIGWINCH) if relay.is_some() => {
                if let Some(r) = relay {
                    r.resize();
                }
            }
            Ok(sig) => {
                log.debug(&format!("forwarding {sig} to {pid}"));
                let _ = nix::sys::signal::kill(pid, sig);
            }
            Err(_) => {}
        }
    }
}
