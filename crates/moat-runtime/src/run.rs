//! `moat-runtime run`: create and start a container in one call, forward signals to its init,
//! wait for it, delete it, and exit with its status (128+N when killed by signal N), as runc does.

use std::process::ExitCode;

use anyhow::{Context, Result};
use moat_container::Store;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::log::Logger;

use moat_runtime::FORWARDED;

pub fn run(
    store: &Store,
    opts: &moat_container::CreateOptions,
    detach: bool,
    keep: bool,
    log: &mut Logger,
) -> Result<ExitCode> {
    let created = moat_container::create(store, opts)
        .with_context(|| format!("create container {}", opts.id))?;
    moat_runtime::print_warnings(&created.warnings);
    if let Err(e) = moat_container::start::start(store, &opts.id) {
        let _ = moat_container::delete::delete(store, &opts.id, true);
        return Err(e).with_context(|| format!("start container {}", opts.id));
    }
    if detach {
        return Ok(ExitCode::SUCCESS);
    }
    let status = wait_forwarding(Pid::from_raw(created.pid), log)?;
    if !keep {
        moat_container::delete::delete(store, &opts.id, true)
            .with_context(|| format!("delete container {}", opts.id))?;
    }
    Ok(ExitCode::from(status.clamp(0, 255) as u8))
}

/// Wait for our child `pid` while forwarding the usual terminal and job-control signals to it;
/// returns its exit status, 128+N when killed by signal N.
pub fn wait_forwarding(pid: Pid, log: &mut Logger) -> Result<i32> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    for s in FORWARDED {
        set.add(*s);
    }
    set.thread_block().context("block signals")?;
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
            Ok(sig) => {
                log.debug(&format!("forwarding {sig} to {pid}"));
                let _ = nix::sys::signal::kill(pid, sig);
            }
            Err(_) => {}
        }
    }
}
