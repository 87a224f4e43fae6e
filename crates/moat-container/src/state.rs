//! The state store: one directory per container under the runtime root (`/run/moat/<id>`), holding
//! `state.json` (written atomically: temp file + rename), the `exec.fifo` that holds the init
//! between `create` and `start`, and a lock file. Every command that changes a container takes an
//! exclusive `flock` on the lock, so concurrent commands on one id are serialised.
//!
//! The status is derived, not stored: a recorded pid whose start time still matches is alive; an
//! alive init with the fifo present is `created`, without it `running`; otherwise `stopped`.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Hooks;
use serde::{Deserialize, Serialize};

use crate::error::{ContainerError, Result};

/// What `create` records about a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateFile {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// Host pid of the container's init, 0 until known.
    pub pid: i32,
    /// Start time of `pid` (clock ticks since boot) to detect pid reuse.
    pub pid_start: u64,
    /// RFC 3339 creation time.
    pub created: String,
    pub annotations: BTreeMap<String, String>,
    pub cgroup: Option<moat_cgroups::Cgroup>,
    /// True once `create` finished; false while it runs (or after it was killed half-way).
    pub create_done: bool,
    pub hooks: Option<Hooks>,
    #[serde(default)]
    pub owner: String,
    /// The device rules applied at create (the spec's, the defaults, `linux.devices`): `update`
    /// adds its rules to these, whatever the bundle's config.json says later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<oci_spec::runtime::LinuxDeviceCgroup>>,
}

/// The OCI status of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// The OCI state JSON as `runc state` prints it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciState {
    pub oci_version: String,
    pub id: String,
    pub pid: i32,
    pub status: Status,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub annotations: BTreeMap<String, String>,
    pub owner: String,
}

pub const OCI_VERSION: &str = "1.2.0";

/// The runtime root (`--root`).
#[derive(Debug, Clone)]
pub struct Store {
    pub root: PathBuf,
}

/// An exclusive lock on one container, released on drop.
pub struct Lock {
    _file: nix::fcntl::Flock<File>,
}

impl Lock {
    /// In a forked child (the container's init): close this process's copy of the descriptor
    /// without unlocking. The lock belongs to the open file, which the runtime still holds;
    /// dropping the `Lock` would unlock it for the runtime too. An init that kept the copy would
    /// hold the lock after a killed `create`, and `delete --force` would wait on it forever.
    pub fn close_in_child(self) {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&*self._file);
        std::mem::forget(self);
        let _ = nix::unistd::close(fd);
    }
}

impl Store {
    pub fn new(root: impl Into<PathBuf>) -> Store {
        Store { root: root.into() }
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    pub fn fifo(&self, id: &str) -> PathBuf {
        self.dir(id).join("exec.fifo")
    }

    fn ensure_root(&self) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(crate::error::io("create state root", &self.root))
    }

    /// Create the container's directory (fails if the id is taken) and lock it.
    pub fn create_dir(&self, id: &str) -> Result<Lock> {
        validate_id(id)?;
        self.ensure_root()?;
        let dir = self.dir(id);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(ContainerError::Exists(id.into()))
            }
            Err(e) => {
                return Err(ContainerError::Io {
                    what: "create state dir",
                    path: dir,
                    source: e,
                })
            }
        }
        self.lock(id)
    }

    /// Lock an existing container's directory.
    pub fn lock(&self, id: &str) -> Result<Lock> {
        validate_id(id)?;
        let path = self.dir(id).join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => ContainerError::NotFound(id.into()),
                _ => ContainerError::Io {
                    what: "open lock",
                    path: path.clone(),
                    source: e,
                },
            })?;
        let file = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| crate::error::sys(format!("lock {}", path.display()))(e))?;
        // The directory may have been deleted while we waited for the lock.
        if !self.dir(id).join(".lock").exists() {
            return Err(ContainerError::NotFound(id.into()));
        }
        Ok(Lock { _file: file })
    }

    pub fn save(&self, st: &StateFile) -> Result<()> {
        let dir = self.dir(&st.id);
        let tmp = dir.join("state.json.tmp");
        let data = serde_json::to_vec(st).map_err(|e| ContainerError::State {
            id: st.id.clone(),
            path: tmp.clone(),
            message: e.to_string(),
        })?;
        std::fs::write(&tmp, data).map_err(crate::error::io("write state", &tmp))?;
        std::fs::rename(&tmp, dir.join("state.json"))
            .map_err(crate::error::io("rename state", dir.join("state.json")))
    }

    pub fn load(&self, id: &str) -> Result<StateFile> {
        validate_id(id)?;
        let path = self.dir(id).join("state.json");
        let data = std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ContainerError::NotFound(id.into()),
            _ => ContainerError::Io {
                what: "read state",
                path: path.clone(),
                source: e,
            },
        })?;
        serde_json::from_slice(&data).map_err(|e| ContainerError::State {
            id: id.into(),
            path,
            message: e.to_string(),
        })
    }

    /// Ids of all containers in the store, sorted.
    pub fn list(&self) -> Result<Vec<String>> {
        let rd = match std::fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => {
                return Err(ContainerError::Io {
                    what: "list state root",
                    path: self.root.clone(),
                    source: e,
                })
            }
        };
        let mut ids: Vec<String> = rd
            .flatten()
            .filter(|e| e.path().join("state.json").exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Remove the container's directory. A process that is still writing into it (the monitor
    /// of an exiting container saving its state while `rm -f` deletes it) can make one pass find
    /// it not empty: a few more passes, then the error.
    pub fn remove(&self, id: &str) -> Result<()> {
        let dir = self.dir(id);
        let mut tries = 0;
        loop {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOTEMPTY) && tries < 20 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => {
                    return Err(ContainerError::Io {
                        what: "remove state dir",
                        path: dir,
                        source: e,
                    })
                }
            }
        }
    }

    /// The derived status of a container.
    pub fn status(&self, st: &StateFile) -> Status {
        if !init_alive(st) {
            return Status::Stopped;
        }
        if !st.create_done {
            return Status::Creating;
        }
        if st
            .cgroup
            .as_ref()
            .is_some_and(|c| c.is_frozen().unwrap_or(false))
        {
            return Status::Paused;
        }
        if self.fifo(&st.id).exists() {
            Status::Created
        } else {
            Status::Running
        }
    }

    pub fn oci_state(&self, st: &StateFile) -> OciState {
        let status = self.status(st);
        OciState {
            oci_version: OCI_VERSION.into(),
            id: st.id.clone(),
            pid: if status == Status::Stopped { 0 } else { st.pid },
            status,
            bundle: st.bundle.clone(),
            rootfs: st.rootfs.clone(),
            created: st.created.clone(),
            annotations: st.annotations.clone(),
            owner: st.owner.clone(),
        }
    }
}

/// Whether the recorded init is still the same live process.
pub fn init_alive(st: &StateFile) -> bool {
    st.pid > 0 && moat_sys::process::start_time(st.pid) == Some(st.pid_start)
}

/// runc's id rule: `^[\w+-\.]+$`, plus no leading '.', at most 1024 bytes.
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ContainerError::InvalidId(id.into()))
    }
}

/// Current time as RFC 3339 with nanoseconds, UTC (what runc prints in `created`).
pub fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now.as_secs() as i64, now.subsec_nanos())
}

fn rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Path of the lock file, for tests.
pub fn lock_path(store: &Store, id: &str) -> PathBuf {
    store.dir(id).join(".lock")
}

/// True if `path` exists (without following a final symlink).
pub fn exists(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(1_700_000_000, 5), "2023-11-14T22:13:20.000000005Z");
        assert_eq!(rfc3339(951_782_400, 0), "2000-02-29T00:00:00.000000000Z");
    }

    #[test]
    fn ids_follow_runc_rules() {
        assert!(validate_id("abc-1_2.3+x").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "a b"] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }
}
