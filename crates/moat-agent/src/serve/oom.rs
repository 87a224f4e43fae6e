//! OOM events: the agent watches the memory cgroup of each started container (moat-cgroups'
//! `oom_kill_count`: `memory.events` `oom_kill` on v2, `memory.oom_control` on v1) and sends
//! [`GuestMessage::Oom`] to every connected host when the count grows. The counters are read
//! every [`OOM_POLL`] and whenever a child was reaped, so the `Oom` of a process the OOM killer
//! ended goes out before its `Exited`.
//!
//! What it must never do: fail the loop (PID 1) over a counter it cannot read; that container
//! is then simply not reported.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use moat_agent_proto::GuestMessage;
use moat_cgroups::Cgroup;

use super::Agent;

/// How often the counters are read while nothing was reaped (one small file per container).
pub(super) const OOM_POLL: Duration = Duration::from_millis(250);

/// The cgroup of each watched container and the OOM-kill count already reported.
#[derive(Default)]
pub(super) struct OomWatch {
    watched: HashMap<String, (Cgroup, u64)>,
    last: Option<Instant>,
}

impl OomWatch {
    /// Start watching container `id` from its current count.
    pub(super) fn add(&mut self, id: &str, cgroup: Cgroup) {
        let seen = cgroup.oom_kill_count().unwrap_or(0);
        self.watched.insert(id.to_string(), (cgroup, seen));
    }

    pub(super) fn remove(&mut self, id: &str) {
        self.watched.remove(id);
    }

    /// The containers whose count grew since the last call (`force`: read now, else only once
    /// per [`OOM_POLL`]).
    fn grown(&mut self, force: bool) -> Vec<String> {
        if !force && self.last.is_some_and(|t| t.elapsed() < OOM_POLL) {
            return vec![];
        }
        self.last = Some(Instant::now());
        let mut out = Vec::new();
        for (id, (cg, seen)) in self.watched.iter_mut() {
            if let Ok(n) = cg.oom_kill_count() {
                if n > *seen {
                    *seen = n;
                    out.push(id.clone());
                }
            }
        }
        out
    }
}

impl Agent {
    /// Report the containers that had a process OOM-killed since the last check to every
    /// connected host.
    pub(super) fn check_ooms(&mut self, force: bool) {
        for container_id in self.ooms.grown(force) {
            crate::log::info(&format!("container {container_id}: OOM kill"));
            let msg = GuestMessage::Oom { container_id };
            for c in &mut self.conns {
                c.send(&msg);
            }
        }
    }
}
