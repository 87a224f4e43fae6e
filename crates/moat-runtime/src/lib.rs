//! The library half of `moat-runtime`: what the front ends share beyond the namespaces core —
//! the VM backend (`io.moat.isolation=vm`) and the list of signals a foreground run forwards to
//! its container. The `moat-runtime` binary and the `moat` CLI both use it.

pub mod vm_backend;

use nix::sys::signal::Signal;

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

/// Print a create's non-fatal findings (seccomp rules for syscalls this architecture lacks, a
/// cgroup that already holds processes), one `warning:` line each on stderr, as runc warns.
pub fn print_warnings(warnings: &[String]) {
    for w in warnings {
        eprintln!("warning: {w}");
    }
}
