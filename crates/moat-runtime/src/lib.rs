//! The library half of `moat-runtime`: what the front ends share beyond the namespaces core —
//! the VM backend (`io.moat.isolation=vm`) and the list of signals a foreground run forwards to
//! its container, and the terminal relay of a foreground container ([`tty`]). The `moat-runtime`
//! binary and the `moat` CLI both use it.

pub mod tty;
pub mod vm_backend;

use nix::sys::signal::{SigSet, Signal};

/// The terminal and job-control signals a foreground `run` forwards to its container.
pub const FORWARDED: &[Signal] = &[
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGCONT,
    Signal::SIGALRM,
];

/// Block SIGCHLD and the [`FORWARDED`] signals on the calling thread (threads it spawns inherit
/// the mask), so that they queue for the thread that waits for the container; returns the set.
pub fn block_forwarded() -> nix::Result<SigSet> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    for s in FORWARDED {
        set.add(*s);
    }
    set.thread_block()?;
    Ok(set)
}
