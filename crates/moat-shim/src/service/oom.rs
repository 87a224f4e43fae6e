//! OOM events of the namespaces containers: a thread follows the running containers' memory
//! cgroups through [`moat_cgroups::oom::OomWatch`] (an eventfd on cgroup v1's
//! `memory.oom_control`, inotify on v2's `memory.events`) and publishes `TaskOOM` when a
//! container's `oom_kill` count grows. It sleeps in `poll` until the kernel or the service
//! ([`OomWake`]: a container started or exited) wakes it; it used to read every cgroup every
//! 500 ms. A process's exit checks its container's count first ([`Inner::oom_before_exit`]), so
//! a process the OOM killer ended (a container's init, most often) is reported as OOM before its
//! `TaskExit`, as with runc's shim: Kubernetes' `OOMKilled` depends on it.
//!
//! What it must never do: publish one OOM kill twice; [`Inner::report_oom`] raises the count
//! and publishes under one lock.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use containerd_shim::protos::events::task::TaskOOM;
use containerd_shim::protos::topics;
use moat_cgroups::oom::OomWatch;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::Inner;

/// A pipe whose read end wakes the watcher.
pub(super) struct OomWake {
    rd: OwnedFd,
    wr: OwnedFd,
}

impl OomWake {
    pub(super) fn new() -> std::io::Result<OomWake> {
        use nix::fcntl::OFlag;
        let (rd, wr) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        Ok(OomWake { rd, wr })
    }

    /// Make the watcher look at the running containers again.
    pub(super) fn wake(&self) {
        // A full pipe already wakes it.
        let _ = nix::unistd::write(&self.wr, b"w");
    }

    fn drain(&self) {
        let mut buf = [0u8; 64];
        while matches!(nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&self.rd), &mut buf), Ok(n) if n > 0)
        {
        }
    }
}

impl Inner {
    /// Publish `TaskOOM` for container `id` if `count` is above what was reported.
    pub(super) fn report_oom(&self, id: &str, count: u64) {
        let _one = self.oom_report.lock().unwrap_or_else(|e| e.into_inner());
        {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            match st.ctrs.get_mut(id) {
                Some(c) if c.ooms < count => c.ooms = count,
                _ => return,
            }
        }
        log::info!("container {id}: OOM kill");
        self.publish(
            topics::TASK_OOM_EVENT_TOPIC,
            Box::new(TaskOOM {
                container_id: id.to_string(),
                ..Default::default()
            }),
        );
    }

    /// The cgroup of container `id`: read from its state file the first time, then remembered.
    fn cgroup_of(&self, id: &str) -> Option<moat_cgroups::Cgroup> {
        let known = {
            let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            st.ctrs.get(id)?.cgroup.clone()
        };
        if known.is_some() {
            return known;
        }
        let cg = self.store.load(id).ok()?.cgroup?;
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = st.ctrs.get_mut(id) {
            c.cgroup = Some(cg.clone());
        }
        Some(cg)
    }

    /// Before a process of container `id` is published as exited: its OOM kill, if it had one.
    pub(super) fn oom_before_exit(&self, id: &str) {
        let count = self.cgroup_of(id).and_then(|cg| cg.oom_kill_count().ok());
        if let Some(n) = count {
            self.report_oom(id, n);
        }
        self.oom_wake.wake();
    }
}

pub(super) fn watch(i: Arc<Inner>) {
    let mut watch = OomWatch::new();
    // The init pid each watched container had: an id reused by a new container is re-added.
    let mut pids: HashMap<String, i32> = HashMap::new();
    loop {
        let running: Vec<(String, i32, u64)> = {
            let st = i.state.lock().unwrap_or_else(|e| e.into_inner());
            st.ctrs
                .iter()
                .filter(|(_, c)| c.init.started && c.init.exit.is_none())
                .map(|(id, c)| (id.clone(), c.init.pid, c.ooms))
                .collect()
        };
        pids.retain(|id, pid| {
            let keep = running.iter().any(|(r, p, _)| r == id && p == pid);
            if !keep {
                watch.remove(id);
            }
            keep
        });
        for (id, pid, seen) in running {
            if pids.contains_key(&id) {
                continue;
            }
            if let Some(cg) = i.cgroup_of(&id) {
                watch.add(&id, cg, Some(seen));
                pids.insert(id, pid);
            }
        }
        for (id, n) in watch.grown(true) {
            i.report_oom(&id, n);
        }
        let timeout = watch.next_check().map_or(PollTimeout::NONE, |d| {
            PollTimeout::try_from(d).unwrap_or(PollTimeout::MAX)
        });
        let mut fds = vec![PollFd::new(i.oom_wake.rd.as_fd(), PollFlags::POLLIN)];
        if let Some(fd) = watch.events_fd() {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        let _ = poll(&mut fds, timeout);
        drop(fds);
        i.oom_wake.drain();
        watch.drain_events();
    }
}
