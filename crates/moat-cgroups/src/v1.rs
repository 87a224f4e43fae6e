//! cgroup v1 (and the hybrid layout): one directory per mounted controller, plus the directory in
//! the unified (cgroup2) mount when the host has one.
//!
//! Files written by [`apply`] (field → file):
//! - memory: limit → `memory.limit_in_bytes`, swap → `memory.memsw.limit_in_bytes` (memory+swap,
//!   ordered against the limit as runc does so the kernel's `memsw >= limit` check holds both
//!   when raising and when lowering), reservation → `memory.soft_limit_in_bytes`, kernel →
//!   `memory.kmem.limit_in_bytes`, kernelTCP → `memory.kmem.tcp.limit_in_bytes`, swappiness →
//!   `memory.swappiness`, disableOOMKiller → `memory.oom_control`, useHierarchy →
//!   `memory.use_hierarchy`;
//! - cpu: shares, `cpu.cfs_period_us`/`cpu.cfs_quota_us`/`cpu.cfs_burst_us`, `cpu.rt_period_us`/
//!   `cpu.rt_runtime_us`, `cpu.idle`; cpus/mems → `cpuset.cpus`/`cpuset.mems`;
//! - pids → `pids.max`; blockIO → `blkio.{,bfq.}weight{,_device}`, `blkio.leaf_weight{,_device}`,
//!   `blkio.throttle.*_device`;
//! - hugepageLimits → `hugetlb.<size>.limit_in_bytes`, or, when hugetlb is not a v1 hierarchy
//!   but is enabled in the hybrid unified mount, `hugetlb.<size>.max` there;
//! - network → `net_cls.classid`, `net_prio.ifpriomap`; rdma → `rdma.max` (v1 or unified);
//! - devices → `devices.deny`/`devices.allow` (see [`crate::devices`]);
//! - unified: refused with runc's message, as runc refuses it on any host that is not pure
//!   cgroup v2 (hybrid included).
//!
//! What it must never do: write a controller's file in another controller's hierarchy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::{LinuxCpu, LinuxMemory, LinuxResources};

use crate::fsio::{has, read, read_u64, write, Writes};
use crate::{common, devices, mounts, unset, v2, CgroupError, Result, ROOT};

/// The directories of a v1 cgroup by controller, and the unified directory in hybrid mode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct V1Dirs {
    by_controller: BTreeMap<String, PathBuf>,
    unified: Option<PathBuf>,
}

impl V1Dirs {
    /// Map directories to controllers using this host's mounts. A directory not below a known
    /// mount is classified by its hierarchy name (`/sys/fs/cgroup/<a,b>/...`).
    pub fn from_dirs(dirs: &[PathBuf]) -> V1Dirs {
        let ms = mounts::mounts();
        let mut out = V1Dirs::default();
        for dir in dirs {
            if let Some(m) = mounts::mount_of(&ms, dir) {
                if m.unified {
                    out.unified = Some(dir.clone());
                }
                for c in &m.controllers {
                    out.by_controller.insert(c.clone(), dir.clone());
                }
                continue;
            }
            let Ok(rest) = dir.strip_prefix(ROOT) else {
                continue;
            };
            let Some(name) = rest.iter().next().and_then(|n| n.to_str()) else {
                continue;
            };
            if name == "unified" {
                out.unified = Some(dir.clone());
            } else {
                for c in name.split(',') {
                    out.by_controller.insert(c.to_owned(), dir.clone());
                }
            }
        }
        out
    }

    /// Build from explicit (controller, directory) pairs and an optional unified directory.
    pub fn new(
        pairs: impl IntoIterator<Item = (String, PathBuf)>,
        unified: Option<PathBuf>,
    ) -> V1Dirs {
        V1Dirs {
            by_controller: pairs.into_iter().collect(),
            unified,
        }
    }

    /// The directory of `controller`, if that hierarchy is mounted.
    pub fn get(&self, controller: &str) -> Option<&Path> {
        self.by_controller.get(controller).map(PathBuf::as_path)
    }

    /// The directory in the hybrid unified hierarchy.
    pub fn unified(&self) -> Option<&Path> {
        self.unified.as_deref()
    }

    fn need(&self, controller: &str, field: &str) -> Result<&Path> {
        self.get(controller).ok_or_else(|| {
            CgroupError::Unsupported(format!(
                "{field}: the {controller} controller is not mounted on this host"
            ))
        })
    }
}

/// Apply `res` to a v1 cgroup, its zero values meaning "unset" as in runc ([`unset`]).
pub fn apply(dirs: &V1Dirs, res: &LinuxResources) -> Result<()> {
    let mut w = Writes::live();
    apply_with(&mut w, dirs, &unset::normalize(res)?)
}

/// Apply the normalized `res` through `w` (which may be the check pass).
pub(crate) fn apply_with(w: &mut Writes, dirs: &V1Dirs, res: &LinuxResources) -> Result<()> {
    if let Some(m) = res.memory() {
        memory(w, dirs, m)?;
    }
    if let Some(c) = res.cpu() {
        cpu(w, dirs, c)?;
    }
    if let Some(p) = res.pids() {
        let f = "linux.resources.pids.limit";
        w.set(
            dirs.need("pids", f)?,
            "pids.max",
            &common::pids_max(p.limit()),
            f,
        )?;
    }
    if let Some(b) = res.block_io() {
        blkio(w, dirs, b)?;
    }
    if let Some(h) = res.hugepage_limits() {
        for (i, l) in h.iter().enumerate() {
            let field = format!("linux.resources.hugepageLimits[{i}]");
            let size = common::page_size(l.page_size(), &field)?;
            if let Some(dir) = dirs.get("hugetlb") {
                let value = common::signed_limit(l.limit());
                w.set(
                    dir,
                    &format!("hugetlb.{size}.limit_in_bytes"),
                    &value,
                    &field,
                )?;
            } else if let Some(u) = dirs.unified().filter(|u| has(u, "cgroup.controllers")) {
                v2::hugetlb_one(w, u, size, l.limit(), &field)?;
            } else {
                return Err(CgroupError::Unsupported(format!(
                    "{field}: the hugetlb controller is neither a v1 hierarchy nor in a unified mount on this host"
                )));
            }
        }
    }
    if let Some(n) = res.network() {
        if let Some(id) = n.class_id() {
            let f = "linux.resources.network.classID";
            w.set(
                dirs.need("net_cls", f)?,
                "net_cls.classid",
                &id.to_string(),
                f,
            )?;
        }
        for (i, p) in n.priorities().iter().flatten().enumerate() {
            let f = format!("linux.resources.network.priorities[{i}]");
            let line = format!("{} {}", p.name(), p.priority());
            w.set(dirs.need("net_prio", &f)?, "net_prio.ifpriomap", &line, &f)?;
        }
    }
    if let Some(r) = res.rdma() {
        let f = "linux.resources.rdma";
        let dir = match (dirs.get("rdma"), dirs.unified()) {
            (Some(d), _) => d,
            (None, Some(u)) if has(u, "rdma.max") => u,
            _ => {
                return Err(CgroupError::Unsupported(format!(
                    "{f}: the rdma controller is not mounted on this host"
                )))
            }
        };
        common::rdma(w, dir, r)?;
    }
    // runc refuses `unified` unless the host is pure cgroup v2, hybrid hosts included: its
    // files would land in a hierarchy that holds none of the container's v1 controllers.
    if res.unified().as_ref().is_some_and(|u| !u.is_empty()) {
        return Err(CgroupError::Unsupported(
            "linux.resources.unified: invalid configuration: cannot use unified on cgroup v1"
                .into(),
        ));
    }
    // Last: device rules (write-only files) cannot be undone by a rollback.
    if let Some(d) = res.devices() {
        let f = "linux.resources.devices";
        devices::apply_v1(w, dirs.need("devices", f)?, d)?;
    }
    Ok(())
}

fn memory(w: &mut Writes, dirs: &V1Dirs, m: &LinuxMemory) -> Result<()> {
    const MEMSW: &str = "memory.memsw.limit_in_bytes";
    const LIMIT: &str = "memory.limit_in_bytes";
    let dir = dirs.need("memory", "linux.resources.memory")?;
    let (f_limit, f_swap) = (
        "linux.resources.memory.limit",
        "linux.resources.memory.swap",
    );
    let limit = common::mem_value(m.limit(), f_limit)?;
    let mut swap = common::mem_value(m.swap(), f_swap)?;
    if m.check_before_update() == Some(true) {
        if let Some(l) = limit.filter(|&l| l > 0) {
            common::check_usage(&dir.join("memory.usage_in_bytes"), l, f_limit)?;
        }
    }
    // Unlimited memory without an explicit swap means unlimited memory+swap too (runc).
    if limit == Some(-1) && swap.is_none() && has(dir, MEMSW) {
        swap = Some(-1);
    }
    if swap.is_some() && !has(dir, MEMSW) {
        return Err(CgroupError::Unsupported(format!(
            "{f_swap}: swap accounting is off on this host ({} is missing; boot with swapaccount=1)",
            dir.join(MEMSW).display()
        )));
    }
    match (limit, swap) {
        (Some(l), Some(s)) => {
            // The kernel requires memsw >= limit at every step: raise swap first when growing.
            let cur = read_u64(&dir.join(LIMIT))?;
            if s == -1 || cur < s as u64 {
                w.set(dir, MEMSW, &s.to_string(), f_swap)?;
                w.set(dir, LIMIT, &l.to_string(), f_limit)?;
            } else {
                w.set(dir, LIMIT, &l.to_string(), f_limit)?;
                w.set(dir, MEMSW, &s.to_string(), f_swap)?;
            }
        }
        (Some(l), None) => w.set(dir, LIMIT, &l.to_string(), f_limit)?,
        (None, Some(s)) => w.set(dir, MEMSW, &s.to_string(), f_swap)?,
        (None, None) => {}
    }
    if let Some(r) = common::mem_value(m.reservation(), "linux.resources.memory.reservation")? {
        let f = "linux.resources.memory.reservation";
        w.set(dir, "memory.soft_limit_in_bytes", &r.to_string(), f)?;
    }
    if let Some(k) = m.kernel() {
        let f = "linux.resources.memory.kernel";
        w.set(dir, "memory.kmem.limit_in_bytes", &k.to_string(), f)?;
    }
    if let Some(k) = m.kernel_tcp() {
        let f = "linux.resources.memory.kernelTCP";
        w.set(dir, "memory.kmem.tcp.limit_in_bytes", &k.to_string(), f)?;
    }
    if let Some(s) = m.swappiness() {
        let f = "linux.resources.memory.swappiness";
        if s > 100 {
            return Err(CgroupError::Invalid {
                field: f.into(),
                reason: format!("{s} is above 100"),
            });
        }
        w.set(dir, "memory.swappiness", &s.to_string(), f)?;
    }
    if let Some(d) = m.disable_oom_killer() {
        let f = "linux.resources.memory.disableOOMKiller";
        w.set(dir, "memory.oom_control", if d { "1" } else { "0" }, f)?;
    }
    if let Some(h) = m.use_hierarchy() {
        let f = "linux.resources.memory.useHierarchy";
        w.set(dir, "memory.use_hierarchy", if h { "1" } else { "0" }, f)?;
    }
    Ok(())
}

fn cpu(w: &mut Writes, dirs: &V1Dirs, c: &LinuxCpu) -> Result<()> {
    let scheduler = c.shares().is_some()
        || c.quota().is_some()
        || c.period().is_some()
        || c.burst().is_some()
        || c.realtime_period().is_some()
        || c.realtime_runtime().is_some()
        || c.idle().is_some();
    if scheduler {
        let dir = dirs.need("cpu", "linux.resources.cpu")?;
        if let Some(s) = c.shares().filter(|&s| s != 0) {
            w.set(
                dir,
                "cpu.shares",
                &s.to_string(),
                "linux.resources.cpu.shares",
            )?;
        }
        let (fp, fq) = ("linux.resources.cpu.period", "linux.resources.cpu.quota");
        let quota = c.quota().filter(|&q| q != 0);
        let mut retry_period = None;
        if let Some(p) = c.period().filter(|&p| p != 0) {
            match w.set(dir, "cpu.cfs_period_us", &p.to_string(), fp) {
                Ok(()) => {}
                // A smaller period can make old_quota/new_period exceed the parent's quota:
                // retry after the quota is written (runc does the same).
                Err(CgroupError::Resource { source, .. })
                    if source.raw_os_error() == Some(libc::EINVAL) && quota.is_some() =>
                {
                    retry_period = Some(p);
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(b) = c.burst() {
            w.set(
                dir,
                "cpu.cfs_burst_us",
                &b.to_string(),
                "linux.resources.cpu.burst",
            )?;
        }
        if let Some(q) = quota {
            w.set(dir, "cpu.cfs_quota_us", &q.to_string(), fq)?;
        }
        if let Some(p) = retry_period {
            w.set(dir, "cpu.cfs_period_us", &p.to_string(), fp)?;
        }
        if let Some(p) = c.realtime_period().filter(|&p| p != 0) {
            let f = "linux.resources.cpu.realtimePeriod";
            w.set(dir, "cpu.rt_period_us", &p.to_string(), f)?;
        }
        if let Some(r) = c.realtime_runtime().filter(|&r| r != 0) {
            let f = "linux.resources.cpu.realtimeRuntime";
            w.set(dir, "cpu.rt_runtime_us", &r.to_string(), f)?;
        }
        if let Some(i) = c.idle() {
            w.set(dir, "cpu.idle", &i.to_string(), "linux.resources.cpu.idle")?;
        }
    }
    for (file, value, f) in [
        ("cpuset.cpus", c.cpus(), "linux.resources.cpu.cpus"),
        ("cpuset.mems", c.mems(), "linux.resources.cpu.mems"),
    ] {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            w.set(dirs.need("cpuset", f)?, file, v, f)?;
        }
    }
    Ok(())
}

fn blkio(w: &mut Writes, dirs: &V1Dirs, b: &oci_spec::runtime::LinuxBlockIo) -> Result<()> {
    let dir = dirs.need("blkio", "linux.resources.blockIO")?;
    // blkio.weight (CFQ) was replaced by blkio.bfq.weight (BFQ) in newer kernels.
    let (weight, weight_dev) = if has(dir, "blkio.weight") {
        ("blkio.weight", "blkio.weight_device")
    } else {
        ("blkio.bfq.weight", "blkio.bfq.weight_device")
    };
    if let Some(wt) = b.weight() {
        w.set(
            dir,
            weight,
            &wt.to_string(),
            "linux.resources.blockIO.weight",
        )?;
    }
    if let Some(wt) = b.leaf_weight() {
        let f = "linux.resources.blockIO.leafWeight";
        w.set(dir, "blkio.leaf_weight", &wt.to_string(), f)?;
    }
    for (i, d) in b.weight_device().iter().flatten().enumerate() {
        if let Some(wt) = d.weight() {
            let f = format!("linux.resources.blockIO.weightDevice[{i}].weight");
            let line = format!("{}:{} {wt}", d.major(), d.minor());
            w.set(dir, weight_dev, &line, &f)?;
        }
        if let Some(wt) = d.leaf_weight() {
            let f = format!("linux.resources.blockIO.weightDevice[{i}].leafWeight");
            let line = format!("{}:{} {wt}", d.major(), d.minor());
            w.set(dir, "blkio.leaf_weight_device", &line, &f)?;
        }
    }
    for (name, file, list) in [
        (
            "throttleReadBpsDevice",
            "blkio.throttle.read_bps_device",
            b.throttle_read_bps_device(),
        ),
        (
            "throttleWriteBpsDevice",
            "blkio.throttle.write_bps_device",
            b.throttle_write_bps_device(),
        ),
        (
            "throttleReadIOPSDevice",
            "blkio.throttle.read_iops_device",
            b.throttle_read_iops_device(),
        ),
        (
            "throttleWriteIOPSDevice",
            "blkio.throttle.write_iops_device",
            b.throttle_write_iops_device(),
        ),
    ] {
        for (i, t) in list.iter().flatten().enumerate() {
            let f = format!("linux.resources.blockIO.{name}[{i}]");
            let line = format!("{}:{} {}", t.major(), t.minor(), t.rate());
            w.set(dir, file, &line, &f)?;
        }
    }
    Ok(())
}

/// Freeze (`true`) or thaw (`false`) through `freezer.state`, waiting for FROZEN.
pub fn freeze(dirs: &V1Dirs, frozen: bool) -> Result<()> {
    let dir = dirs.need("freezer", if frozen { "freeze" } else { "thaw" })?;
    let path = dir.join("freezer.state");
    if !frozen {
        return write(&path, "THAWED");
    }
    let start = Instant::now();
    let mut state = String::new();
    let mut i = 0u32;
    let mut next_request = 0u32;
    while start.elapsed() < Duration::from_secs(5) {
        // Re-request FROZEN now and then: a freeze can stall on a task in an uninterruptible
        // sleep, and a thaw/refreeze cycle unblocks it (runc does the same).
        if i == next_request {
            next_request += 50;
            if i > 0 {
                write(&path, "THAWED")?;
            }
            write(&path, "FROZEN")?;
        }
        state = read(&path)?.trim().to_owned();
        if state == "FROZEN" {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(if i < 10 { 1 } else { 10 }));
        i += 1;
    }
    let _ = write(&path, "THAWED");
    Err(CgroupError::Timeout {
        op: "freeze",
        path,
        secs: 5,
        state,
    })
}

/// Whether `freezer.state` reads FROZEN.
pub fn is_frozen(dirs: &V1Dirs) -> Result<bool> {
    let dir = dirs.need("freezer", "freezer state")?;
    Ok(read(&dir.join("freezer.state"))?.trim() == "FROZEN")
}

/// Create each missing level of a v1 cpuset directory and copy cpus/mems from its parent: a v1
/// cpuset with empty `cpuset.cpus` refuses tasks.
pub(crate) fn create_cpuset_dirs(dir: &Path) -> Result<()> {
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
        let parent = d.parent().unwrap_or(Path::new(ROOT));
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
