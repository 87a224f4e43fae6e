//! The cgroup mounts of this host, read from /proc/self/mountinfo: which hierarchies exist under
//! /sys/fs/cgroup and which controllers each one carries.

use std::path::{Path, PathBuf};

use crate::{CgroupError, Result, ROOT};

/// Controllers a v1 hierarchy can carry (the other super options are mount flags).
const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "blkio",
    "pids",
    "hugetlb",
    "net_cls",
    "net_prio",
    "perf_event",
    "rdma",
    "misc",
];

/// One cgroup (v1) or cgroup2 mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mount {
    pub point: PathBuf,
    /// True for cgroup2.
    pub unified: bool,
    /// The v1 controllers of the hierarchy (empty for cgroup2 and for `name=` hierarchies).
    pub controllers: Vec<String>,
}

/// Parse the cgroup mounts below /sys/fs/cgroup from mountinfo text.
pub(crate) fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let mut post = post.split_whitespace();
        let fstype = post.next().unwrap_or("");
        let _source = post.next();
        let opts = post.next().unwrap_or("");
        let mnt = pre.split_whitespace().nth(4).unwrap_or("");
        if (fstype == "cgroup" || fstype == "cgroup2") && mnt.starts_with(ROOT) && mnt != ROOT {
            out.push(Mount {
                point: PathBuf::from(mnt),
                unified: fstype == "cgroup2",
                controllers: opts
                    .split(',')
                    .filter(|o| V1_CONTROLLERS.contains(o))
                    .map(str::to_owned)
                    .collect(),
            });
        }
    }
    out.sort_by(|a, b| a.point.cmp(&b.point));
    out.dedup_by(|a, b| a.point == b.point);
    out
}

/// The cgroup mounts of this host below /sys/fs/cgroup (empty if mountinfo is unreadable).
pub(crate) fn mounts() -> Vec<Mount> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|s| parse_mountinfo(&s))
        .unwrap_or_default()
}

/// The v1 hierarchies mounted on this host (directories under /sys/fs/cgroup that are cgroup
/// mounts), including the unified cgroup2 mount in hybrid mode.
pub(crate) fn hierarchies() -> Result<Vec<PathBuf>> {
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| CgroupError::Read {
            path: "/proc/self/mountinfo".into(),
            source,
        })?;
    let out: Vec<PathBuf> = parse_mountinfo(&text)
        .into_iter()
        .map(|m| m.point)
        .collect();
    if out.is_empty() {
        return Err(CgroupError::NoCgroupFs);
    }
    Ok(out)
}

/// The mount that holds `dir` (longest mount point that is a prefix of it).
pub(crate) fn mount_of<'a>(mounts: &'a [Mount], dir: &Path) -> Option<&'a Mount> {
    mounts
        .iter()
        .filter(|m| dir.starts_with(&m.point))
        .max_by_key(|m| m.point.as_os_str().len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hybrid_mountinfo() {
        let text = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct,clone_children
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 5);
        let cc = mount_of(&m, Path::new("/sys/fs/cgroup/cpu,cpuacct/moat/x")).unwrap();
        assert_eq!(cc.controllers, ["cpu", "cpuacct"]);
        let u = mount_of(&m, Path::new("/sys/fs/cgroup/unified/moat/x")).unwrap();
        assert!(u.unified && u.controllers.is_empty());
        let s = mount_of(&m, Path::new("/sys/fs/cgroup/systemd/moat")).unwrap();
        assert!(!s.unified && s.controllers.is_empty());
        assert!(mount_of(&m, Path::new("/tmp/x")).is_none());
    }
}
