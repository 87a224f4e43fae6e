//! `moat-cgroups` owns the container's cgroup: where it is (v1 per-controller hierarchies, the
//! hybrid layout with a cgroup2 mount at /sys/fs/cgroup/unified, or pure v2), creating it, placing
//! processes in it, applying `linux.resources`, freezing, stats and removal.
//!
//! The interface is one closed enum, [`Cgroup`], with a v1 and a v2 implementation. What it must
//! never do: silently ignore a resource it was asked to enforce.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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

const ROOT: &str = "/sys/fs/cgroup";

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
    if std::path::Path::new(ROOT)
        .join("cgroup.controllers")
        .exists()
    {
        Ok(Layout::V2)
    } else if std::path::Path::new(ROOT).is_dir() {
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
    if systemd && !std::path::Path::new("/run/systemd/system").exists() {
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

/// The v1 hierarchies mounted on this host (directories under /sys/fs/cgroup that are cgroup
/// mounts), including the unified cgroup2 mount in hybrid mode.
fn v1_hierarchies() -> Result<Vec<PathBuf>> {
    let mounts =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| CgroupError::Read {
            path: "/proc/self/mountinfo".into(),
            source,
        })?;
    let mut out = Vec::new();
    for line in mounts.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let fstype = post.split_whitespace().next().unwrap_or("");
        let mnt = pre.split_whitespace().nth(4).unwrap_or("");
        if (fstype == "cgroup" || fstype == "cgroup2") && mnt.starts_with(ROOT) && mnt != ROOT {
            out.push(PathBuf::from(mnt));
        }
    }
    out.sort();
    out.dedup();
    if out.is_empty() {
        return Err(CgroupError::NoCgroupFs);
    }
    Ok(out)
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
                dirs: v1_hierarchies()?
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
    /// so that tasks can be attached.
    pub fn create(&self) -> Result<()> {
        for dir in self.dirs() {
            if dir.starts_with(format!("{ROOT}/cpuset")) {
                create_cpuset_dirs(&dir)?;
            } else {
                std::fs::create_dir_all(&dir).map_err(|source| CgroupError::Create {
                    path: dir.clone(),
                    source,
                })?;
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

    /// Pids currently in the cgroup (first hierarchy that has processes, including nested cgroups).
    pub fn pids(&self) -> Result<Vec<i32>> {
        let dir = match self {
            Cgroup::V1 { dirs } => dirs
                .iter()
                .find(|d| {
                    d.starts_with(format!("{ROOT}/pids"))
                        || d.starts_with(format!("{ROOT}/freezer"))
                })
                .or(dirs.first())
                .cloned()
                .unwrap_or_default(),
            Cgroup::V2 { dir } => dir.clone(),
        };
        let mut out = Vec::new();
        collect_pids(&dir, &mut out);
        Ok(out)
    }

    /// Remove the cgroup and every nested cgroup the container created, deepest first. Processes
    /// still inside must have been killed by the caller; a busy directory is retried briefly.
    pub fn destroy(&self) -> Result<()> {
        for dir in self.dirs() {
            remove_tree(&dir)?;
        }
        Ok(())
    }
}

fn collect_pids(dir: &std::path::Path, out: &mut Vec<i32>) {
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

fn remove_tree(dir: &std::path::Path) -> Result<()> {
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
    let mut delay = std::time::Duration::from_millis(1);
    for _ in 0..40 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(delay);
                delay = (delay * 2).min(std::time::Duration::from_millis(100));
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

fn create_cpuset_dirs(dir: &std::path::Path) -> Result<()> {
    // Create each missing level and copy cpus/mems from its parent: a v1 cpuset with empty
    // cpuset.cpus refuses tasks.
    let mut to_create = Vec::new();
    let mut cur = dir.to_path_buf();
    while !cur.exists() {
        to_create.push(cur.clone());
        if !cur.pop() {
            break;
        }
    }
    for d in to_create.into_iter().rev() {
        std::fs::create_dir(&d)
            .or_else(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(|source| CgroupError::Create {
                path: d.clone(),
                source,
            })?;
        let parent = d.parent().unwrap_or(std::path::Path::new(ROOT));
        for f in ["cpuset.cpus", "cpuset.mems"] {
            let cur = read(&d.join(f))?;
            if cur.trim().is_empty() {
                let v = read(&parent.join(f))?;
                write(&d.join(f), v.trim())?;
            }
        }
    }
    Ok(())
}

pub(crate) fn write(path: &std::path::Path, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.into(),
        value: value.into(),
        source,
    })
}

pub(crate) fn read(path: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.into(),
        source,
    })
}
