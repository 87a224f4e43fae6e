//! `kill`: send a signal to a container's init (through a pidfd, so a reused pid is never hit), or
//! with `--all` to every process in its cgroup.

use nix::sys::signal::Signal;

use crate::error::{ContainerError, Result};
use crate::state::{Status, Store};

/// Parse a signal as runc does: `9`, `KILL`, `SIGKILL`, `sigkill`.
pub fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    if let Ok(sig) = name.parse::<Signal>() {
        return Some(sig as i32);
    }
    // Real-time signals: SIGRTMIN+n / SIGRTMAX-n.
    let rtmin = libc::SIGRTMIN();
    let rtmax = libc::SIGRTMAX();
    if name == "SIGRTMIN" {
        return Some(rtmin);
    }
    if name == "SIGRTMAX" {
        return Some(rtmax);
    }
    if let Some(n) = name
        .strip_prefix("SIGRTMIN+")
        .and_then(|n| n.parse::<i32>().ok())
    {
        return (rtmin + n <= rtmax).then_some(rtmin + n);
    }
    if let Some(n) = name
        .strip_prefix("SIGRTMAX-")
        .and_then(|n| n.parse::<i32>().ok())
    {
        return (rtmax - n >= rtmin).then_some(rtmax - n);
    }
    None
}

pub fn kill(store: &Store, id: &str, signal: i32, all: bool) -> Result<()> {
    let st = store.load(id)?;
    let status = store.status(&st);
    if status == Status::Stopped && !all {
        return Err(ContainerError::BadStatus {
            id: id.into(),
            action: "kill",
            status: status.to_string(),
        });
    }
    if all {
        match &st.cgroup {
            Some(cg) => cg.kill_all(signal)?,
            // A rootless container without a cgroup: its init (with a pid namespace of its own,
            // SIGKILL to it ends every process of the container).
            None if status != Status::Stopped => signal_init(&st, signal)?,
            None => {}
        }
        return Ok(());
    }
    signal_init(&st, signal)
}

/// Signal the recorded init if it is still the same process.
pub fn signal_init(st: &crate::state::StateFile, signal: i32) -> Result<()> {
    let pidfd = moat_sys::process::pidfd_open(nix::unistd::Pid::from_raw(st.pid)).map_err(
        crate::error::sys(format!("open pidfd of container {} init {}", st.id, st.pid)),
    )?;
    // Check identity after opening the pidfd: if the start time still matches, the pidfd is ours.
    if !crate::state::init_alive(st) {
        return Err(ContainerError::BadStatus {
            id: st.id.clone(),
            action: "kill",
            status: "stopped".into(),
        });
    }
    moat_sys::process::pidfd_send_signal(&pidfd, signal).map_err(crate::error::sys(format!(
        "signal {signal} to container {} init {}",
        st.id, st.pid
    )))
}

/// SIGKILL every process of the container (its cgroup, else its init) and wait up to 2 s for the
/// init to be gone: what runc does when a poststart hook fails.
pub fn kill_and_wait(st: &crate::state::StateFile) {
    match &st.cgroup {
        Some(cg) => {
            let _ = cg.kill_all(libc::SIGKILL);
        }
        None => {
            let _ = signal_init(st, libc::SIGKILL);
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while crate::state::init_alive(st) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
