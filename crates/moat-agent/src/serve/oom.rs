//! OOM events: the agent watches the memory cgroup of each started container
//! ([`moat_cgroups::oom::OomWatch`]: inotify on `memory.events`, the guest's hierarchy being v2)
//! and sends [`GuestMessage::Oom`] to every connected host when its `oom_kill` count grows. The
//! counters are read when the watch says so and whenever a child was reaped, so the `Oom` of a
//! process the OOM killer ended goes out before its `Exited`.
//!
//! What it must never do: fail the loop (PID 1) over a counter it cannot read; that container
//! is then simply not reported.

use moat_agent_proto::GuestMessage;

use super::Agent;

impl Agent {
    /// Report the containers that had a process OOM-killed since the last check to every
    /// connected host.
    pub(super) fn check_ooms(&mut self, force: bool) {
        for (container_id, _) in self.ooms.grown(force) {
            crate::log::info(&format!("container {container_id}: OOM kill"));
            let msg = GuestMessage::Oom { container_id };
            for c in &mut self.conns {
                c.send(&msg);
            }
        }
    }
}
