//! The record of a VM container (`<state dir>/vm.json`) and the teardown that works from it
//! alone: QEMU and virtiofsd (checked against their recorded start times, signalled through
//! pidfds), the network attachment (taps, tc qdiscs), the cgroup, the run dir and the state dir.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use moat_container::state::Status;
use moat_container::Store;
use moat_vm::AgentClient;
use serde::{Deserialize, Serialize};

use super::error::{Result, VmBackendError};

pub(super) const STATE_FILE: &str = "vm.json";
const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);

/// A host process the VM backend started, recorded so that a later command can tell it from a
/// recycled pid.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct HostProc {
    pub pid: i32,
    pub start_time: u64,
}

impl HostProc {
    pub fn of(pid: i32) -> Option<HostProc> {
        moat_sys::process::start_time(pid).map(|start_time| HostProc { pid, start_time })
    }

    /// The same live process as recorded.
    pub fn alive(&self) -> bool {
        self.pid > 0 && moat_sys::process::start_time(self.pid) == Some(self.start_time)
    }

    /// SIGKILL through a pidfd, after checking (with the pidfd pinning it) that it is ours.
    pub fn kill(&self) {
        let pid = nix::unistd::Pid::from_raw(self.pid);
        if let Ok(fd) = moat_sys::process::pidfd_open(pid) {
            if self.alive() {
                let _ = moat_sys::process::pidfd_send_signal(&fd, libc::SIGKILL);
            }
        }
    }

    /// Wait until it is gone (or a zombie); false on timeout. Woken by its pidfd (readable once
    /// it has exited), not by polling its /proc entry.
    pub fn wait_gone(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        if let Ok(fd) = moat_sys::process::pidfd_open(nix::unistd::Pid::from_raw(self.pid)) {
            // The pidfd pins the pid: if the recorded process is alive now, it is this one.
            if !self.alive() {
                return true;
            }
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
                let mut fds = [nix::poll::PollFd::new(
                    std::os::fd::AsFd::as_fd(&fd),
                    nix::poll::PollFlags::POLLIN,
                )];
                match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)) {
                    Ok(n) if n > 0 => return true,
                    Err(nix::errno::Errno::EINTR) if !left.is_zero() => continue,
                    _ => return !self.alive(),
                }
            }
        }
        while self.alive() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }
}

/// What later commands need to find the VM again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct VmState {
    pub id: String,
    pub bundle: PathBuf,
    pub created: String,
    /// creating, created, running or paused; "stopped" is derived from QEMU being gone.
    pub status: Status,
    pub qemu_pid: i32,
    pub qemu_start_time: u64,
    /// The server of the shared directory (bind mounts), if the VM has one.
    #[serde(default)]
    pub virtiofsd: Option<HostProc>,
    /// The first agent port's socket; the VM has `agent_ports` of them in `run_dir`.
    pub agent_socket: PathBuf,
    #[serde(default = "one")]
    pub agent_ports: u32,
    pub run_dir: PathBuf,
    /// The taps and tc redirects joining the VM to its network namespace, if it joined one.
    #[serde(default)]
    pub net: Option<super::network::NetRecord>,
    pub image: PathBuf,
    pub cgroups_path: Option<String>,
    pub systemd_cgroup: bool,
    /// Nothing written in the VM outlives it (a clone with its read-only image disk and no
    /// shared directory): ending it needs no clean power-off, a SIGKILL will do.
    #[serde(default)]
    pub disposable: bool,
    pub annotations: std::collections::BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}

fn state_path(store: &Store, id: &str) -> PathBuf {
    store.dir(id).join(STATE_FILE)
}

impl VmState {
    pub fn save(&self, store: &Store) -> Result<()> {
        let path = state_path(store, &self.id);
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(self).map_err(|source| VmBackendError::Json {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&tmp, bytes).map_err(VmBackendError::io("write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(VmBackendError::io("rename", &path))
    }

    pub fn load(store: &Store, id: &str) -> Result<VmState> {
        let path = state_path(store, id);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(VmBackendError::NotFound(id.into()))
            }
            Err(e) => return Err(VmBackendError::io("read", path)(e)),
        };
        serde_json::from_slice(&text).map_err(|source| VmBackendError::Json { path, source })
    }

    fn qemu(&self) -> HostProc {
        HostProc {
            pid: self.qemu_pid,
            start_time: self.qemu_start_time,
        }
    }

    /// QEMU is the same live process that `create` started.
    pub fn alive(&self) -> bool {
        self.qemu().alive()
    }

    pub fn status(&self) -> Status {
        if self.alive() {
            self.status
        } else {
            Status::Stopped
        }
    }

    /// Fail unless the container is `want`.
    pub fn require(&self, action: &'static str, want: Status) -> Result<()> {
        let status = self.status();
        if status != want {
            return Err(VmBackendError::BadStatus {
                id: self.id.clone(),
                action,
                status,
            });
        }
        Ok(())
    }

    /// The host ends of the agent ports.
    fn agent_sockets(&self) -> Vec<PathBuf> {
        (0..self.agent_ports.max(1))
            .map(|i| moat_vm::qemu::agent_socket(&self.run_dir, i))
            .collect()
    }

    /// Connect to the agent on a free port (each attached command holds one).
    pub fn attach(&self) -> Result<AgentClient> {
        self.attach_within(ATTACH_TIMEOUT)
    }

    fn attach_within(&self, limit: Duration) -> Result<AgentClient> {
        AgentClient::attach_any(&self.agent_sockets(), limit).map_err(VmBackendError::vm(format!(
            "attach to the agent of container {}",
            self.id
        )))
    }

    pub fn cgroup(&self) -> Option<moat_cgroups::Cgroup> {
        moat_cgroups::Cgroup::resolve(self.cgroups_path.as_deref(), &self.id, self.systemd_cgroup)
            .ok()
    }

    pub fn wait_gone(&self, limit: Duration) -> bool {
        self.qemu().wait_gone(limit)
    }

    /// SIGKILL a live disposable VM (no clean power-off to wait for: tens to hundreds of ms
    /// under TCG); whether it did.
    pub fn end_if_disposable(&self) -> bool {
        let end = self.disposable && self.alive();
        if end {
            self.qemu().kill();
        }
        end
    }

    /// End the VM (ask the agent, then SIGKILL) and its virtiofsd, and remove the network
    /// attachment, the cgroup, the run dir and the state dir.
    pub fn destroy(&self, store: &Store) -> Result<()> {
        if self.end_if_disposable() && !self.wait_gone(Duration::from_secs(5)) {
            return Err(VmBackendError::QemuStuck {
                id: self.id.clone(),
                pid: self.qemu_pid,
            });
        }
        if self.alive() {
            // Ask politely (the agent deletes its containers and powers off), briefly.
            if let Ok(mut a) = self.attach_within(Duration::from_millis(500)) {
                let _ = a.shutdown();
            }
            if !self.wait_gone(Duration::from_millis(1000)) {
                self.qemu().kill();
                if !self.wait_gone(Duration::from_secs(5)) {
                    return Err(VmBackendError::QemuStuck {
                        id: self.id.clone(),
                        pid: self.qemu_pid,
                    });
                }
            }
        }
        if let Some(v) = self.virtiofsd {
            // It exits by itself once QEMU is gone; make sure.
            if !v.wait_gone(Duration::from_millis(500)) {
                v.kill();
                v.wait_gone(Duration::from_secs(5));
            }
        }
        // The terminal relays end with the agent connection; make sure before their records go.
        super::terminal::kill_relays(store, &self.id);
        // QEMU is gone: its taps are free to go, and the redirects on the namespace's interfaces.
        // A failure here keeps the state (and so the record of the taps) for a later delete.
        if let Some(net) = &self.net {
            net.detach(&self.id)?;
        }
        if let Some(cg) = self.cgroup() {
            if cg.dirs().iter().any(|d| d.exists()) {
                cg.destroy().map_err(|source| VmBackendError::Cgroup {
                    what: format!("remove the cgroup of container {}", self.id),
                    source,
                })?;
            }
        }
        if !self.run_dir.as_os_str().is_empty() {
            match std::fs::remove_dir_all(&self.run_dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(VmBackendError::io("remove", &self.run_dir)(e)),
            }
        }
        // Two deletes may race (`moat rm -f` and the exiting container's monitor): the store's
        // removal takes what the other already removed, or is still writing, in its stride.
        store.remove(&self.id)?;
        Ok(())
    }
}

/// The ids of the VM containers in `store`.
pub(super) fn list_ids(store: &Store) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(&store.root) else {
        return vec![];
    };
    let mut ids: Vec<String> = rd
        .flatten()
        .filter(|e| e.path().join(STATE_FILE).exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    ids.sort();
    ids
}
