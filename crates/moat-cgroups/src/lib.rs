//! `moat-cgroups` owns the container's cgroup: where it is (v1 per-controller hierarchies, the
//! hybrid layout with a cgroup2 mount at /sys/fs/cgroup/unified, or pure v2), creating it, placing
//! processes in it, applying `linux.resources`, freezing, killing, stats and removal.
//!
//! The interface is one closed enum, [`Cgroup`], with a v1 and a v2 implementation:
//! - [`v1`]: per-controller directories (and, in the hybrid layout, the unified directory for the
//!   controllers that only cgroup2 owns, such as hugetlb on some hosts),
//! - [`v2`]: one directory in the unified hierarchy,
//! - [`devices`]: the device rules (v1 `devices.allow`/`devices.deny` lines, v2 eBPF program),
//! - [`stats`]: the `events --stats` data, shaped like runc's,
//! - [`oom`]: waiting for OOM kills without polling (the guest agent's and the shim's).
//!
//! What it must never do: silently ignore a resource it was asked to enforce. Every field of
//! `linux.resources` is either written or refused with [`CgroupError::Unsupported`] naming the
//! field; a value the kernel refuses yields [`CgroupError::Resource`] naming field and file.
#![forbid(unsafe_code)]

mod common;
pub mod devices;
mod fsio;
mod mounts;
pub mod oom;
pub mod rootless;
pub mod stats;
pub mod unset;
pub mod v1;
pub mod v2;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};

pub use common::{blkio_weight_to_io, shares_to_weight};
pub(crate) use fsio::write;
use fsio::Writes;
pub use stats::Stats;

/// Errors of this crate; each names the cgroup file or directory involved.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup path {0:?} is invalid: {1}")]
    InvalidPath(String, &'static str),
    #[error("create cgroup {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("write {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
    },
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("remove cgroup {path}: {source}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no cgroup filesystem found under /sys/fs/cgroup")]
    NoCgroupFs,
    #[error("systemd cgroup driver requested but systemd is not running on this host (no /run/systemd/system); run without --systemd-cgroup")]
    NoSystemd,
    #[error("{0}")]
    Unsupported(String),
    /// A resource value the kernel (or our validation) refused.
    #[error("{field}: write {value:?} to {path}: {source}")]
    Resource {
        field: String,
        path: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
    },
    /// A limit a rootless runtime cannot honour (its cgroup is not writable by the user).
    #[error("{field}: {reason}")]
    Rootless { field: String, reason: String },
    /// A resource value that is invalid before anything is written.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// Unexpected content in a cgroup file.
    #[error("parse {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    /// A bpf(2) step of the v2 device program failed.
    #[error("linux.resources.devices: {op} on {path}: {source}{log}")]
    Bpf {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: moat_sys::Errno,
        /// The verifier log (prefixed with a newline) when the load was refused.
        log: String,
    },
    #[error("{op} {path}: timed out after {secs}s (state {state:?})")]
    Timeout {
        op: &'static str,
        path: PathBuf,
        secs: u64,
        state: String,
    },
    #[error("send signal {signal} to pid {pid}: {source}")]
    Signal {
        pid: i32,
        signal: i32,
        #[source]
        source: moat_sys::Errno,
    },
}

pub type Result<T> = std::result::Result<T, CgroupError>;

/// A container's cgroup, resolved to concrete directories. Serialisable so that the state store can
/// record exactly which directories to clean on delete.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Cgroup {
    /// One directory per mounted v1 hierarchy (and the unified one in hybrid mode).
    V1 { dirs: Vec<PathBuf> },
    /// One directory in the unified hierarchy.
    V2 { dir: PathBuf },
}

pub(crate) const ROOT: &str = "/sys/fs/cgroup";

/// Which layout the host uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Only v1 hierarchies (possibly with a cgroup2 mount beside them: hybrid).
    V1,
    /// Pure cgroup v2 at /sys/fs/cgroup.
    V2,
}

/// Detect the host's layout from the filesystem type of /sys/fs/cgroup.
pub fn layout() -> Result<Layout> {
    if Path::new(ROOT).join("cgroup.controllers").exists() {
        Ok(Layout::V2)
    } else if Path::new(ROOT).is_dir() {
        Ok(Layout::V1)
    } else {
        Err(CgroupError::NoCgroupFs)
    }
}

/// Turn the spec's `cgroupsPath` into a path relative to the hierarchy root.
/// - absent: `/moat/<id>`
/// - absolute `/a/b`: as is
/// - relative `a/b`: below the runtime's own cgroup (as the OCI spec says)
/// - `slice:prefix:name` (systemd form): mapped to its cgroupfs path `/<slice path>/<prefix>-<name>.scope`.
pub fn relative_path(cgroups_path: Option<&str>, id: &str, systemd: bool) -> Result<PathBuf> {
    if systemd && !Path::new("/run/systemd/system").exists() {
        return Err(CgroupError::NoSystemd);
    }
    let p = match cgroups_path {
        None | Some("") => return Ok(PathBuf::from(format!("/moat/{id}"))),
        Some(p) => p,
    };
    if p.split('/').any(|c| c == "..") {
        return Err(CgroupError::InvalidPath(p.into(), "\"..\" is not allowed"));
    }
    let parts: Vec<&str> = p.split(':').collect();
    if parts.len() == 3 && !p.starts_with('/') {
        return Ok(systemd_to_fs(parts[0], parts[1], parts[2]));
    }
    if p.starts_with('/') {
        return Ok(PathBuf::from(p));
    }
    let own = own_cgroup_v2_or_first().unwrap_or_else(|| "/".into());
    Ok(PathBuf::from(own).join(p))
}

fn systemd_to_fs(slice: &str, prefix: &str, name: &str) -> PathBuf {
    // "a-b-c.slice" lives at /a.slice/a-b.slice/a-b-c.slice
    let slice = if slice.is_empty() {
        "system.slice"
    } else {
        slice
    };
    let mut path = PathBuf::from("/");
    let base = slice.trim_end_matches(".slice");
    let mut acc = String::new();
    for (i, part) in base.split('-').enumerate() {
        if i > 0 {
            acc.push('-');
        }
        acc.push_str(part);
        path.push(format!("{acc}.slice"));
    }
    let unit = if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    path.push(unit);
    path
}

fn own_cgroup_v2_or_first() -> Option<String> {
    let s = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
        .or_else(|| {
            s.lines()
                .next()
                .and_then(|l| l.splitn(3, ':').nth(2))
                .map(str::to_owned)
        })
}

impl Cgroup {
    /// Resolve the directories of a container's cgroup without creating anything.
    pub fn resolve(cgroups_path: Option<&str>, id: &str, systemd: bool) -> Result<Cgroup> {
        let rel = relative_path(cgroups_path, id, systemd)?;
        let rel = rel.strip_prefix("/").unwrap_or(&rel).to_owned();
        match layout()? {
            Layout::V2 => Ok(Cgroup::V2 {
                dir: PathBuf::from(ROOT).join(rel),
            }),
            Layout::V1 => Ok(Cgroup::V1 {
                dirs: mounts::hierarchies()?
                    .into_iter()
                    .map(|h| h.join(&rel))
                    .collect(),
            }),
        }
    }

    /// Every directory of this cgroup.
    pub fn dirs(&self) -> Vec<PathBuf> {
        match self {
            Cgroup::V1 { dirs } => dirs.clone(),
            Cgroup::V2 { dir } => vec![dir.clone()],
        }
    }

    /// Create the directories (and parents). On v1, cpuset.cpus/mems are filled from the parent
    /// so that tasks can be attached. In a cgroup2 hierarchy (pure v2, or the unified mount of
    /// the hybrid layout) every controller available at the root is enabled down to the parent,
    /// best effort: a controller that cannot be enabled (e.g. the no-internal-process rule) makes
    /// the resources that need it fail later with an error naming the missing file.
    pub fn create(&self) -> Result<()> {
        for dir in self.dirs() {
            if dir.starts_with(format!("{ROOT}/cpuset")) {
                v1::create_cpuset_dirs(&dir)?;
            } else {
                std::fs::create_dir_all(&dir).map_err(|source| CgroupError::Create {
                    path: dir.clone(),
                    source,
                })?;
                if dir.join("cgroup.controllers").exists() {
                    v2::enable_controllers(&dir);
                }
            }
        }
        Ok(())
    }

    /// Move `pid` into the cgroup (every hierarchy).
    pub fn add_pid(&self, pid: i32) -> Result<()> {
        for dir in self.dirs() {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// The directory whose `cgroup.procs` (recursively) lists the container's processes.
    fn procs_dir(&self) -> PathBuf {
        match self {
            Cgroup::V1 { dirs } => {
                let m = v1::V1Dirs::from_dirs(dirs);
                m.get("pids")
                    .or_else(|| m.get("freezer"))
                    .map(Path::to_path_buf)
                    .or_else(|| dirs.first().cloned())
                    .unwrap_or_default()
            }
            Cgroup::V2 { dir } => dir.clone(),
        }
    }

    /// Pids currently in the cgroup (first hierarchy that has processes, including nested cgroups).
    pub fn pids(&self) -> Result<Vec<i32>> {
        let mut out = Vec::new();
        collect_pids(&self.procs_dir(), &mut out);
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Apply every field of `res` (zero values meaning "unset" as in runc, see [`unset`]); see
    /// the module docs of [`v1`] and [`v2`] for the files.
    pub fn apply(&self, res: &LinuxResources) -> Result<()> {
        let res = unset::normalize(res)?;
        self.apply_with(&mut Writes::live(), &res)
    }

    fn apply_with(&self, w: &mut Writes, res: &LinuxResources) -> Result<()> {
        match self {
            Cgroup::V1 { dirs } => v1::apply_with(w, &v1::V1Dirs::from_dirs(dirs), res),
            Cgroup::V2 { dir } => v2::apply_with(w, dir, res),
        }
    }

    /// Update the limits of a running container, all or nothing: the whole request is checked
    /// first (values, and that every file it needs exists) without writing anything; then it is
    /// written, and if the kernel refuses a value part-way, the files already written get their
    /// previous values back. With `memory.checkBeforeUpdate: true`, a memory limit below the
    /// current usage is refused (instead of letting the kernel reclaim or OOM-kill).
    pub fn update(&self, res: &LinuxResources) -> Result<()> {
        let res = unset::normalize(res)?;
        self.apply_with(&mut Writes::check(), &res)?;
        let mut w = Writes::live();
        match self.apply_with(&mut w, &res) {
            Ok(()) => Ok(()),
            Err(e) => {
                w.rollback();
                Err(e)
            }
        }
    }

    /// Freeze every process of the cgroup and wait until the kernel reports it frozen.
    pub fn freeze(&self) -> Result<()> {
        match self {
            Cgroup::V1 { dirs } => v1::freeze(&v1::V1Dirs::from_dirs(dirs), true),
            Cgroup::V2 { dir } => v2::freeze(dir, true),
        }
    }

    /// Thaw the cgroup.
    pub fn thaw(&self) -> Result<()> {
        match self {
            Cgroup::V1 { dirs } => v1::freeze(&v1::V1Dirs::from_dirs(dirs), false),
            Cgroup::V2 { dir } => v2::freeze(dir, false),
        }
    }

    /// Whether the cgroup is (completely) frozen.
    pub fn is_frozen(&self) -> Result<bool> {
        match self {
            Cgroup::V1 { dirs } => v1::is_frozen(&v1::V1Dirs::from_dirs(dirs)),
            Cgroup::V2 { dir } => v2::is_frozen(dir),
        }
    }

    /// Resource usage, shaped like the `data` of runc's `events --stats`.
    pub fn stats(&self) -> Result<Stats> {
        match self {
            Cgroup::V1 { dirs } => stats::v1(&v1::V1Dirs::from_dirs(dirs)),
            Cgroup::V2 { dir } => stats::v2(dir),
        }
    }

    /// How many processes the kernel's OOM killer killed in this cgroup so far (v2
    /// `memory.events` `oom_kill`, v1 `memory.oom_control` `oom_kill`).
    pub fn oom_kill_count(&self) -> Result<u64> {
        match self {
            Cgroup::V1 { dirs } => {
                let m = v1::V1Dirs::from_dirs(dirs);
                let dir = m.get("memory").ok_or_else(|| {
                    CgroupError::Unsupported("oom events: memory controller not mounted".into())
                })?;
                fsio::keyed_u64(&dir.join("memory.oom_control"), "oom_kill")
            }
            Cgroup::V2 { dir } => fsio::keyed_u64(&dir.join("memory.events"), "oom_kill"),
        }
    }

    /// Send `signal` to every process of the cgroup, nested cgroups included. The cgroup is
    /// frozen around the signalling where the freezer is available, so that a process cannot fork
    /// a child that escapes the signal; a cgroup that was frozen before stays frozen unless the
    /// signal is SIGKILL (frozen tasks cannot die). On v2 with `cgroup.kill` (Linux 5.14),
    /// SIGKILL is delivered by the kernel atomically.
    pub fn kill_all(&self, signal: i32) -> Result<()> {
        if let Cgroup::V2 { dir } = self {
            if signal == libc::SIGKILL && dir.join("cgroup.kill").exists() {
                return write(&dir.join("cgroup.kill"), "1");
            }
        }
        let sig = moat_sys::nix::sys::signal::Signal::try_from(signal).map_err(|source| {
            CgroupError::Signal {
                pid: 0,
                signal,
                source,
            }
        })?;
        let was_frozen = self.is_frozen().unwrap_or(false);
        let froze = !was_frozen && self.freeze().is_ok();
        if !was_frozen && !froze {
            // A half-frozen cgroup would hold some tasks: undo before signalling.
            let _ = self.thaw();
        }
        let mut first_err = None;
        for pid in self.pids()? {
            let target = moat_sys::nix::unistd::Pid::from_raw(pid);
            match moat_sys::nix::sys::signal::kill(target, sig) {
                Ok(()) | Err(moat_sys::Errno::ESRCH) => {}
                Err(source) => {
                    first_err.get_or_insert(CgroupError::Signal {
                        pid,
                        signal,
                        source,
                    });
                }
            }
        }
        if froze || (was_frozen && signal == libc::SIGKILL) {
            match self.thaw() {
                // Removed meanwhile (its last task died and another destroy is taking it).
                Err(CgroupError::Write { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound => {}
                r => r?,
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Remove the cgroup and every nested cgroup, deepest first. Processes still inside are
    /// killed (SIGKILL via [`Cgroup::kill_all`]) and waited for up to 5 s; a busy directory is
    /// retried briefly.
    pub fn destroy(&self) -> Result<()> {
        if !self.pids()?.is_empty() {
            self.kill_all(libc::SIGKILL)?;
            let deadline = Instant::now() + Duration::from_secs(5);
            while !self.pids()?.is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        for dir in self.dirs() {
            remove_tree(&dir)?;
        }
        Ok(())
    }
}

fn collect_pids(dir: &Path, out: &mut Vec<i32>) {
    if let Ok(s) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_pids(&e.path(), out);
            }
        }
    }
}

fn remove_tree(dir: &Path) -> Result<()> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(CgroupError::Remove {
                path: dir.into(),
                source,
            })
        }
    };
    for e in rd.flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_tree(&e.path())?;
        }
    }
    // rmdir fails with EBUSY while the last killed tasks are still exiting: retry for up to ~2 s.
    let mut delay = Duration::from_millis(1);
    for _ in 0..40 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(100));
            }
            Err(source) => {
                return Err(CgroupError::Remove {
                    path: dir.into(),
                    source,
                })
            }
        }
    }
    std::fs::remove_dir(dir).map_err(|source| CgroupError::Remove {
        path: dir.into(),
        source,
    })
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod path_tests {
    use super::*;

    #[test]
    fn cgroups_path_forms() {
        assert_eq!(
            relative_path(None, "c1", false).unwrap(),
            PathBuf::from("/moat/c1")
        );
        assert_eq!(
            relative_path(Some("/a/b"), "c1", false).unwrap(),
            PathBuf::from("/a/b")
        );
        // systemd's slice:prefix:name, mapped to its cgroupfs path as runc does without systemd.
        assert_eq!(
            relative_path(
                Some("kubepods-besteffort.slice:cri-containerd:abc"),
                "c1",
                false
            )
            .unwrap(),
            PathBuf::from("/kubepods.slice/kubepods-besteffort.slice/cri-containerd-abc.scope")
        );
        assert_eq!(
            relative_path(Some(":moat:x"), "c1", false).unwrap(),
            PathBuf::from("/system.slice/moat-x.scope")
        );
        assert!(relative_path(Some("/a/../b"), "c1", false).is_err());
        let rel = relative_path(Some("rel/x"), "c1", false).unwrap();
        assert!(
            rel.is_absolute() && rel.ends_with("rel/x"),
            "{}",
            rel.display()
        );
    }
}
