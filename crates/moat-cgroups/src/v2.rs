//! cgroup v2: one directory in the unified hierarchy.
//!
//! Files written by [`apply`] (field → file), with runc's conversions:
//! - memory: limit → `memory.max`, swap → `memory.swap.max` = swap − limit (the spec's swap is
//!   memory+swap as in v1), reservation → `memory.low`; a kernel or kernelTCP limit, a
//!   swappiness and disableOOMKiller=true have no v2 equivalent and are refused (their "unset"
//!   values, see [`crate::unset`], are not); useHierarchy=true is what v2 always does;
//! - cpu: shares → `cpu.weight` (1 + (shares−2)·9999/262142), quota/period → `cpu.max`
//!   ("max" for a negative quota; a lone period keeps the current quota), burst →
//!   `cpu.max.burst`, idle → `cpu.idle`, cpus/mems → `cpuset.cpus`/`cpuset.mems`; the realtime
//!   fields are refused (no RT group scheduling on v2);
//! - pids → `pids.max`; blockIO: weight → `io.bfq.weight` (raw) or `io.weight` (converted),
//!   weightDevice → the same files with "maj:min w" lines, throttles → `io.max`
//!   ("maj:min rbps=N", 0 meaning "max"), leafWeight refused;
//! - hugepageLimits → `hugetlb.<size>.max` (and `.rsvd.max` when present); rdma → `rdma.max`;
//!   network (net_cls/net_prio) refused; devices → an eBPF program ([`crate::devices`]);
//! - unified: each key written as a file of the directory, after the other files so it can
//!   override them; only the device program comes later (it cannot be rolled back).
//!
//! What it must never do: write outside its directory (unified keys are plain file names).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxMemory, LinuxResources};

use crate::common::{self, v2_num};
use crate::fsio::{has, read, write, Writes};
use crate::{devices, unset, CgroupError, Result};

fn refuse(field: &str) -> CgroupError {
    CgroupError::Unsupported(format!("{field}: not supported on cgroup v2"))
}

/// Apply `res` to the v2 cgroup `dir`, its zero values meaning "unset" as in runc ([`unset`]).
pub fn apply(dir: &Path, res: &LinuxResources) -> Result<()> {
    let mut w = Writes::live();
    apply_with(&mut w, dir, &unset::normalize(res)?)
}

/// Apply the normalized `res` through `w` (which may be the check pass).
pub(crate) fn apply_with(w: &mut Writes, dir: &Path, res: &LinuxResources) -> Result<()> {
    if let Some(m) = res.memory() {
        memory(w, dir, m)?;
    }
    if let Some(c) = res.cpu() {
        cpu(w, dir, c)?;
    }
    if let Some(p) = res.pids() {
        let f = "linux.resources.pids.limit";
        w.set(dir, "pids.max", &common::pids_max(p.limit()), f)?;
    }
    if let Some(b) = res.block_io() {
        io(w, dir, b)?;
    }
    for (i, l) in res.hugepage_limits().iter().flatten().enumerate() {
        let field = format!("linux.resources.hugepageLimits[{i}]");
        let size = common::page_size(l.page_size(), &field)?;
        hugetlb_one(w, dir, size, l.limit(), &field)?;
    }
    if let Some(n) = res.network() {
        if n.class_id().is_some() {
            return Err(refuse(
                "linux.resources.network.classID (net_cls is a v1-only controller)",
            ));
        }
        if n.priorities().as_ref().is_some_and(|p| !p.is_empty()) {
            return Err(refuse(
                "linux.resources.network.priorities (net_prio is a v1-only controller)",
            ));
        }
    }
    if let Some(r) = res.rdma() {
        common::rdma(w, dir, r)?;
    }
    if let Some(u) = res.unified() {
        unified(w, dir, u, false)?;
    }
    // Last: the device program cannot be undone by a rollback, so nothing may fail after it.
    if let Some(d) = res.devices() {
        devices::apply_v2(w, dir, d)?;
    }
    Ok(())
}

/// runc's conversion of the spec's memory+swap limit into `memory.swap.max` (swap only).
/// `None` means "leave memory.swap.max alone".
pub fn swap_max(swap: Option<i64>, limit: Option<i64>) -> Result<Option<i64>> {
    let f = "linux.resources.memory.swap";
    let swap = common::mem_value(swap, f)?;
    let limit = common::mem_value(limit, "linux.resources.memory.limit")?;
    match (swap, limit) {
        // Unlimited memory and no explicit swap: both unlimited, as v1 behaves.
        (None, Some(-1)) => Ok(Some(-1)),
        (None, _) => Ok(None),
        (Some(-1), _) => Ok(Some(-1)),
        (Some(_), None | Some(-1)) => Err(CgroupError::Invalid {
            field: f.into(),
            reason: "a swap limit needs a memory limit (swap is memory+swap)".into(),
        }),
        (Some(s), Some(l)) if s < l => Err(CgroupError::Invalid {
            field: f.into(),
            reason: format!("memory+swap {s} is below the memory limit {l}"),
        }),
        (Some(s), Some(l)) => Ok(Some(s - l)),
    }
}

fn memory(w: &mut Writes, dir: &Path, m: &LinuxMemory) -> Result<()> {
    let f_limit = "linux.resources.memory.limit";
    if m.kernel().is_some() {
        return Err(refuse("linux.resources.memory.kernel"));
    }
    if m.kernel_tcp().is_some() {
        return Err(refuse("linux.resources.memory.kernelTCP"));
    }
    if m.swappiness().is_some() {
        return Err(refuse("linux.resources.memory.swappiness"));
    }
    if m.disable_oom_killer() == Some(true) {
        return Err(refuse("linux.resources.memory.disableOOMKiller"));
    }
    let limit = common::mem_value(m.limit(), f_limit)?;
    if m.check_before_update() == Some(true) {
        if let Some(l) = limit.filter(|&l| l > 0) {
            common::check_usage(&dir.join("memory.current"), l, f_limit)?;
        }
    }
    // Swap first: memory.swap.max does not depend on memory.max on v2, and an error here must
    // not leave a new memory limit half applied.
    if let Some(s) = swap_max(m.swap(), m.limit())? {
        let f = "linux.resources.memory.swap";
        let v = v2_num(s);
        if has(dir, "memory.swap.max") {
            w.set(dir, "memory.swap.max", &v, f)?;
        } else if s != -1 && s != 0 {
            // No swap controller (swap accounting off): unlimited or no swap are what the
            // container gets anyway; a real swap limit cannot be enforced.
            return Err(CgroupError::Unsupported(format!(
                "{f}: {} does not exist (swap accounting is off on this host)",
                dir.join("memory.swap.max").display()
            )));
        }
    }
    if let Some(l) = limit {
        w.set(dir, "memory.max", &v2_num(l), f_limit)?;
    }
    let f = "linux.resources.memory.reservation";
    if let Some(r) = common::mem_value(m.reservation(), f)? {
        w.set(dir, "memory.low", &v2_num(r), f)?;
    }
    Ok(())
}

fn cpu(w: &mut Writes, dir: &Path, c: &LinuxCpu) -> Result<()> {
    if c.realtime_runtime().is_some_and(|r| r != 0) {
        return Err(refuse("linux.resources.cpu.realtimeRuntime"));
    }
    if c.realtime_period().is_some_and(|p| p != 0) {
        return Err(refuse("linux.resources.cpu.realtimePeriod"));
    }
    if let Some(s) = c.shares().filter(|&s| s != 0) {
        let weight = common::shares_to_weight(s).to_string();
        w.set(dir, "cpu.weight", &weight, "linux.resources.cpu.shares")?;
    }
    let quota = c.quota().filter(|&q| q != 0);
    let period = c.period().filter(|&p| p != 0);
    if quota.is_some() || period.is_some() {
        let f = "linux.resources.cpu.quota";
        let q = match quota {
            Some(q) if q > 0 => q.to_string(),
            Some(_) => "max".to_owned(),
            // Only the period changes: keep the current quota.
            None => read(&dir.join("cpu.max"))?
                .split_whitespace()
                .next()
                .unwrap_or("max")
                .to_owned(),
        };
        let v = match period {
            Some(p) => format!("{q} {p}"),
            None => q,
        };
        w.set(dir, "cpu.max", &v, f)?;
    }
    if let Some(b) = c.burst() {
        w.set(
            dir,
            "cpu.max.burst",
            &b.to_string(),
            "linux.resources.cpu.burst",
        )?;
    }
    if let Some(i) = c.idle() {
        w.set(dir, "cpu.idle", &i.to_string(), "linux.resources.cpu.idle")?;
    }
    if let Some(v) = c.cpus().as_deref().filter(|v| !v.is_empty()) {
        w.set(dir, "cpuset.cpus", v, "linux.resources.cpu.cpus")?;
    }
    if let Some(v) = c.mems().as_deref().filter(|v| !v.is_empty()) {
        w.set(dir, "cpuset.mems", v, "linux.resources.cpu.mems")?;
    }
    Ok(())
}

fn io(w: &mut Writes, dir: &Path, b: &LinuxBlockIo) -> Result<()> {
    if b.leaf_weight().is_some() {
        return Err(refuse("linux.resources.blockIO.leafWeight"));
    }
    let bfq = has(dir, "io.bfq.weight");
    if let Some(wt) = b.weight() {
        let f = "linux.resources.blockIO.weight";
        if bfq {
            w.set(dir, "io.bfq.weight", &wt.to_string(), f)?;
        } else {
            let v = common::blkio_weight_to_io(wt).to_string();
            w.set(dir, "io.weight", &format!("default {v}"), f)?;
        }
    }
    for (i, d) in b.weight_device().iter().flatten().enumerate() {
        if d.leaf_weight().is_some() {
            return Err(refuse(&format!(
                "linux.resources.blockIO.weightDevice[{i}].leafWeight"
            )));
        }
        if let Some(wt) = d.weight() {
            let f = format!("linux.resources.blockIO.weightDevice[{i}].weight");
            let (file, wt) = if bfq {
                ("io.bfq.weight", u64::from(wt))
            } else {
                ("io.weight", common::blkio_weight_to_io(wt))
            };
            w.set(dir, file, &format!("{}:{} {wt}", d.major(), d.minor()), &f)?;
        }
    }
    for (name, key, list) in [
        (
            "throttleReadBpsDevice",
            "rbps",
            b.throttle_read_bps_device(),
        ),
        (
            "throttleWriteBpsDevice",
            "wbps",
            b.throttle_write_bps_device(),
        ),
        (
            "throttleReadIOPSDevice",
            "riops",
            b.throttle_read_iops_device(),
        ),
        (
            "throttleWriteIOPSDevice",
            "wiops",
            b.throttle_write_iops_device(),
        ),
    ] {
        for (i, t) in list.iter().flatten().enumerate() {
            let f = format!("linux.resources.blockIO.{name}[{i}]");
            // v1 semantics: a rate of 0 removes the limit.
            let rate = match t.rate() {
                0 => "max".to_owned(),
                r => r.to_string(),
            };
            let line = format!("{}:{} {key}={rate}", t.major(), t.minor());
            w.set(dir, "io.max", &line, &f)?;
        }
    }
    Ok(())
}

/// Write one hugetlb limit in v2 format (`hugetlb.<size>.max`, and `.rsvd.max` when present).
pub(crate) fn hugetlb_one(
    w: &mut Writes,
    dir: &Path,
    size: &str,
    limit: i64,
    field: &str,
) -> Result<()> {
    let v = v2_num(limit);
    w.set(dir, &format!("hugetlb.{size}.max"), &v, field)?;
    let rsvd = format!("hugetlb.{size}.rsvd.max");
    if has(dir, &rsvd) {
        w.set(dir, &rsvd, &v, field)?;
    }
    Ok(())
}

/// Interface files that belong to the runtime's own lifecycle, not to `unified`.
const RESERVED: &[&str] = &[
    "cgroup.procs",
    "cgroup.threads",
    "cgroup.subtree_control",
    "cgroup.freeze",
    "cgroup.kill",
    "cgroup.type",
];

/// Write the `unified` map: each key is a file name in `dir` (`hybrid`: `dir` is in the unified
/// mount beside v1 hierarchies, which only affects the error message).
pub(crate) fn unified(
    w: &mut Writes,
    dir: &Path,
    map: &HashMap<String, String>,
    hybrid: bool,
) -> Result<()> {
    let mut keys: Vec<_> = map.iter().collect();
    keys.sort_by(|a, b| a.0.cmp(b.0));
    for (k, v) in keys {
        let field = format!("linux.resources.unified[{k:?}]");
        if k.is_empty() || k.contains('/') || k.starts_with('.') {
            return Err(CgroupError::Invalid {
                field,
                reason: "must be a file name of the cgroup directory".into(),
            });
        }
        if RESERVED.contains(&k.as_str()) {
            return Err(CgroupError::Invalid {
                field,
                reason: "is managed by the runtime and cannot be set".into(),
            });
        }
        if !has(dir, k) {
            let ctrl = k.split('.').next().unwrap_or(k);
            return Err(CgroupError::Unsupported(format!(
                "{field}: {} does not exist (the {ctrl} controller is not enabled in this cgroup2 hierarchy{})",
                dir.join(k).display(),
                if hybrid {
                    "; in the hybrid layout most controllers are bound to v1"
                } else {
                    ""
                }
            )));
        }
        w.set(dir, k, v, &field)?;
    }
    Ok(())
}

/// Enable, best effort, every controller available at the root of `dir`'s cgroup2 hierarchy in
/// `cgroup.subtree_control` of each ancestor of `dir`.
pub(crate) fn enable_controllers(dir: &Path) {
    let mut chain: Vec<&Path> = dir
        .ancestors()
        .skip(1)
        .take_while(|a| a.join("cgroup.controllers").exists())
        .collect();
    chain.reverse();
    for a in chain {
        let Ok(avail) = read(&a.join("cgroup.controllers")) else {
            return;
        };
        let enabled = read(&a.join("cgroup.subtree_control")).unwrap_or_default();
        for c in avail.split_whitespace() {
            if !enabled.split_whitespace().any(|e| e == c) {
                let _ = write(&a.join("cgroup.subtree_control"), &format!("+{c}"));
            }
        }
    }
}

/// Freeze (`true`) or thaw (`false`) with `cgroup.freeze`, waiting for `cgroup.events` to agree.
pub fn freeze(dir: &Path, frozen: bool) -> Result<()> {
    let want = if frozen { "1" } else { "0" };
    let path = dir.join("cgroup.freeze");
    if !path.exists() {
        return Err(CgroupError::Unsupported(format!(
            "freeze: {} does not exist (needs Linux 5.2)",
            path.display()
        )));
    }
    write(&path, want)?;
    let start = Instant::now();
    let mut delay = Duration::from_millis(1);
    loop {
        let state = events_frozen(dir)?;
        if state == frozen {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(5) {
            if frozen {
                let _ = write(&path, "0");
            }
            return Err(CgroupError::Timeout {
                op: if frozen { "freeze" } else { "thaw" },
                path,
                secs: 5,
                state: format!("frozen {}", u8::from(state)),
            });
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(20));
    }
}

fn events_frozen(dir: &Path) -> Result<bool> {
    let events = read(&dir.join("cgroup.events"))?;
    Ok(events.lines().any(|l| l.trim() == "frozen 1"))
}

/// Whether `cgroup.events` reports the cgroup frozen.
pub fn is_frozen(dir: &Path) -> Result<bool> {
    events_frozen(dir)
}
