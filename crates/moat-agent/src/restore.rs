//! Templates and their clones, the guest's half. A template VM (`moat.template` on its command
//! line) boots like any other; on [`moat_agent_proto::Request::PrepareTemplate`] the agent drops
//! the guest's caches and from then on survives the host closing port 0, since the host saves
//! the VM and goes away. Every clone resumes right there, with the template's memory: the same
//! CRNG state, clock, hostname and MACs. [`make_unique`] gives it its own before any container
//! process runs (the agent refuses other requests until it has).
//!
//! The boot id (`/proc/sys/kernel/random/boot_id`) needs nothing: the kernel draws it from the
//! CRNG on its first read, which nothing in a template does, so each clone draws its own after
//! the reseed.
//!
//! What it must never do: let a clone run a container with the template's random state.

use std::os::fd::AsFd;

use moat_agent_proto::Restore;

use crate::error::{AgentFailure, Result};

/// Where a sandbox stands in the template life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// A cold boot: no template involved.
    Cold,
    /// Booted as a template, not yet prepared.
    Template,
    /// Prepared and saved (or a clone not yet made unique): only `Restored` and `Ping` served.
    Saved,
    /// A clone made unique.
    Clone,
}

impl Phase {
    pub fn from_cmdline() -> Phase {
        let template = std::fs::read_to_string("/proc/cmdline")
            .unwrap_or_default()
            .split_whitespace()
            .any(|w| w == moat_agent_proto::TEMPLATE_FLAG);
        if template {
            Phase::Template
        } else {
            Phase::Cold
        }
    }
}

fn invalid(what: String) -> AgentFailure {
    AgentFailure::Invalid(what)
}

/// Drop what the guest caches, so that clones start from as few touched pages as possible.
pub fn prepare() -> Result<()> {
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3")
        .map_err(|e| AgentFailure::io("write", "/proc/sys/vm/drop_caches", e))?;
    // Best effort: fewer, larger free blocks (nothing depends on it).
    let _ = std::fs::write("/proc/sys/vm/compact_memory", "1");
    Ok(())
}

/// Make this clone a guest of its own (see the module doc).
pub fn make_unique(r: &Restore) -> Result<()> {
    if r.entropy.len() < 32 {
        return Err(invalid(format!(
            "{} bytes of entropy (at least 32)",
            r.entropy.len()
        )));
    }
    let id_ok = r.machine_id.len() == 32
        && r.machine_id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !id_ok {
        return Err(invalid(format!("machine id {:?}", r.machine_id)));
    }
    if r.hostname.is_empty() || r.hostname.len() > 64 {
        return Err(invalid(format!("hostname {:?}", r.hostname)));
    }
    // The host's bytes are credited as entropy (the guest has no RNG device; a CRNG that was
    // not ready becomes ready here), then the CRNG is reseeded from the pool at once.
    let urandom = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(|e| AgentFailure::io("open", "/dev/urandom", e))?;
    moat_sys::random::add_entropy(urandom.as_fd(), &r.entropy).map_err(|errno| {
        AgentFailure::Sys {
            what: "add the host's entropy (RNDADDENTROPY)".into(),
            errno,
        }
    })?;
    moat_sys::random::reseed_crng(urandom.as_fd()).map_err(|errno| AgentFailure::Sys {
        what: "reseed the CRNG (RNDRESEEDCRNG)".into(),
        errno,
    })?;
    let now = std::time::Duration::from_nanos(r.realtime_ns);
    nix::time::clock_settime(
        nix::time::ClockId::CLOCK_REALTIME,
        nix::sys::time::TimeSpec::from_duration(now),
    )
    .map_err(|errno| AgentFailure::Sys {
        what: "set the wall clock".into(),
        errno,
    })?;
    nix::unistd::sethostname(&r.hostname).map_err(|errno| AgentFailure::Sys {
        what: format!("set the hostname {}", r.hostname),
        errno,
    })?;
    let _ = std::fs::create_dir_all("/etc");
    std::fs::write("/etc/machine-id", format!("{}\n", r.machine_id))
        .map_err(|e| AgentFailure::io("write", "/etc/machine-id", e))?;
    for (from, to) in &r.macs {
        crate::net::set_mac(from, to)?;
    }
    Ok(())
}
