//! Watching containers' memory cgroups for OOM kills without polling: the guest agent and the
//! shim both use [`OomWatch`].
//!
//! Each watched cgroup's `oom_kill` counter ([`Cgroup::oom_kill_count`]) is what is reported; the
//! kernel only says *when* to read it:
//! - cgroup v2: inotify `IN_MODIFY` on the cgroup's `memory.events` (the kernel notifies the file
//!   on every event it counts);
//! - cgroup v1: an eventfd registered for `memory.oom_control` through `cgroup.event_control`.
//!   The kernel signals it when the cgroup hits its limit, *before* the OOM killer has chosen
//!   and counted a victim, and not at all for a kill by the global OOM killer; so after each
//!   signal the counter is read every [`V1_BURST_EVERY`] for [`V1_BURST`], and otherwise every
//!   [`V1_POLL`] (what catches global OOM kills);
//! - a cgroup neither works for (no memory controller, a registration refused) is read every
//!   [`OOM_POLL`].
//!
//! All of them sit behind one epoll descriptor ([`OomWatch::events_fd`]), so a caller's loop
//! polls one more descriptor and sleeps otherwise.
//!
//! What it must never do: fail its caller over a counter it cannot read or a cgroup it cannot
//! watch; that container is then read periodically, or not reported if even that fails.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use crate::Cgroup;

/// How often the counters of cgroups that cannot be watched are read.
pub const OOM_POLL: Duration = Duration::from_millis(250);
/// How often v1 counters are read while no OOM was signalled.
pub const V1_POLL: Duration = Duration::from_secs(1);
/// After a v1 OOM signal: how long, and how often, the counters are read.
pub const V1_BURST: Duration = Duration::from_secs(1);
pub const V1_BURST_EVERY: Duration = Duration::from_millis(50);

/// The epoll key of the inotify descriptor; eventfds get `1 + n`.
const INOTIFY_KEY: u64 = 0;

/// How a cgroup is watched.
enum How {
    /// An inotify watch on its `memory.events` (v2).
    Inotify(WatchDescriptor),
    /// An eventfd registered for its `memory.oom_control` (v1).
    EventFd(EventFd),
    /// Read every [`OOM_POLL`].
    Poll,
}

struct Watched {
    cgroup: Cgroup,
    seen: u64,
    how: How,
}

/// The OOM-kill counters of a set of containers, by id, and the descriptors that say when to
/// read them.
pub struct OomWatch {
    watched: HashMap<String, Watched>,
    /// Created with the first container (`None` after that only if epoll failed: every
    /// container is then polled).
    epoll: Option<Epoll>,
    inotify: Option<Inotify>,
    last_poll: Option<Instant>,
    /// When the v1 counters were last read, and until when they are read often.
    last_v1: Option<Instant>,
    v1_burst_until: Option<Instant>,
    next_key: u64,
}

impl Default for OomWatch {
    fn default() -> Self {
        OomWatch::new()
    }
}

impl OomWatch {
    pub fn new() -> OomWatch {
        OomWatch {
            watched: HashMap::new(),
            epoll: None,
            inotify: None,
            last_poll: None,
            last_v1: None,
            v1_burst_until: None,
            next_key: INOTIFY_KEY + 1,
        }
    }

    /// Whether container `id` is watched.
    pub fn contains(&self, id: &str) -> bool {
        self.watched.contains_key(id)
    }

    /// The ids watched.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.watched.keys().map(String::as_str)
    }

    /// Start watching container `id`, counting OOM kills above `seen` (`None`: above its
    /// current count).
    pub fn add(&mut self, id: &str, cgroup: Cgroup, seen: Option<u64>) {
        self.remove(id);
        let seen = seen.unwrap_or_else(|| cgroup.oom_kill_count().unwrap_or(0));
        if self.epoll.is_none() {
            self.epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).ok();
        }
        let how = self.register(&cgroup).unwrap_or(How::Poll);
        self.watched
            .insert(id.to_string(), Watched { cgroup, seen, how });
    }

    fn register(&mut self, cgroup: &Cgroup) -> Option<How> {
        let epoll = self.epoll.as_ref()?;
        match cgroup {
            Cgroup::V2 { dir } => {
                if self.inotify.is_none() {
                    let i = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok()?;
                    epoll
                        .add(&i, EpollEvent::new(EpollFlags::EPOLLIN, INOTIFY_KEY))
                        .ok()?;
                    self.inotify = Some(i);
                }
                let i = self.inotify.as_ref()?;
                let wd = i
                    .add_watch(&dir.join("memory.events"), AddWatchFlags::IN_MODIFY)
                    .ok()?;
                Some(How::Inotify(wd))
            }
            Cgroup::V1 { dirs } => {
                let v1 = crate::v1::V1Dirs::from_dirs(dirs);
                let dir = v1.get("memory")?;
                let efd =
                    EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC).ok()?;
                let control = std::fs::File::open(dir.join("memory.oom_control")).ok()?;
                let mut events = std::fs::OpenOptions::new()
                    .write(true)
                    .open(dir.join("cgroup.event_control"))
                    .ok()?;
                // One write: the kernel parses each write on its own.
                let line = format!("{} {}", efd.as_raw_fd(), control.as_raw_fd());
                events.write_all(line.as_bytes()).ok()?;
                let key = self.next_key;
                self.next_key += 1;
                epoll
                    .add(&efd, EpollEvent::new(EpollFlags::EPOLLIN, key))
                    .ok()?;
                Some(How::EventFd(efd))
            }
        }
    }

    /// Stop watching container `id`.
    pub fn remove(&mut self, id: &str) {
        let Some(w) = self.watched.remove(id) else {
            return;
        };
        match w.how {
            How::Inotify(wd) => {
                // Two ids watching one file share its watch descriptor.
                let shared = self
                    .watched
                    .values()
                    .any(|o| matches!(o.how, How::Inotify(d) if d == wd));
                if let (Some(i), false) = (&self.inotify, shared) {
                    let _ = i.rm_watch(wd);
                }
            }
            How::EventFd(efd) => {
                if let Some(e) = &self.epoll {
                    let _ = e.delete(&efd);
                }
            }
            How::Poll => {}
        }
    }

    /// The descriptor that is readable when a watched cgroup may have a new OOM kill (`None`
    /// when nothing is watched through one).
    pub fn events_fd(&self) -> Option<BorrowedFd<'_>> {
        let any = self.watched.values().any(|w| !matches!(w.how, How::Poll));
        self.epoll.as_ref().filter(|_| any).map(|e| e.0.as_fd())
    }

    /// Take what [`Self::events_fd`] has (the caller then checks the counters).
    pub fn drain_events(&mut self) {
        let Some(epoll) = &self.epoll else {
            return;
        };
        let mut ready = [EpollEvent::empty(); 32];
        while let Ok(n) = epoll.wait(&mut ready, EpollTimeout::ZERO) {
            if n == 0 {
                break;
            }
            for ev in &ready[..n] {
                if ev.data() == INOTIFY_KEY {
                    if let Some(i) = &self.inotify {
                        while matches!(i.read_events(), Ok(v) if !v.is_empty()) {}
                    }
                }
            }
            let mut v1_signalled = false;
            for w in self.watched.values() {
                if let How::EventFd(efd) = &w.how {
                    v1_signalled |= efd.read().is_ok();
                }
            }
            if v1_signalled {
                self.v1_burst_until = Some(Instant::now() + V1_BURST);
            }
        }
    }

    fn v1_every(&self) -> Duration {
        if self.v1_burst_until.is_some_and(|t| Instant::now() < t) {
            V1_BURST_EVERY
        } else {
            V1_POLL
        }
    }

    /// How long until the next periodic read (`None`: every watched container is watched
    /// through inotify, or none is watched).
    pub fn next_check(&self) -> Option<Duration> {
        let due = |last: Option<Instant>, every: Duration| {
            last.map_or(Duration::ZERO, |t| every.saturating_sub(t.elapsed()))
        };
        let poll = self
            .watched
            .values()
            .any(|w| matches!(w.how, How::Poll))
            .then(|| due(self.last_poll, OOM_POLL));
        let v1 = self
            .watched
            .values()
            .any(|w| matches!(w.how, How::EventFd(_)))
            .then(|| due(self.last_v1, self.v1_every()));
        [poll, v1].into_iter().flatten().min()
    }

    /// The containers whose count grew since the last call, with their new counts. `force`
    /// reads every counter; otherwise the polled ones are read when [`Self::next_check`] says
    /// so and the inotify-watched ones not at all (call with `force` after
    /// [`Self::drain_events`]).
    pub fn grown(&mut self, force: bool) -> Vec<(String, u64)> {
        let now = Instant::now();
        let poll_due = self.last_poll.is_none_or(|t| t.elapsed() >= OOM_POLL);
        if poll_due || force {
            self.last_poll = Some(now);
        }
        let v1_due = self.last_v1.is_none_or(|t| t.elapsed() >= self.v1_every());
        if v1_due || force {
            self.last_v1 = Some(now);
        }
        let mut out = Vec::new();
        for (id, w) in self.watched.iter_mut() {
            let read = match w.how {
                How::Poll => force || poll_due,
                How::EventFd(_) => force || v1_due,
                How::Inotify(_) => force,
            };
            if !read {
                continue;
            }
            if let Ok(n) = w.cgroup.oom_kill_count() {
                if n > w.seen {
                    w.seen = n;
                    out.push((id.clone(), n));
                }
            }
        }
        out
    }
}
