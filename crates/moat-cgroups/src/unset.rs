//! runc's meaning of zero and absent values in `linux.resources`, in one place.
//!
//! runc 1.1 converts the spec into Go structs whose zero value means "not set" (libcontainer's
//! `specconv`), and its writers (`cgroups/fs`, `cgroups/fs2`) skip a zero. Clients rely on it:
//! Docker sends `cpu.shares: 0`, `blockIO.weight: 0` and `memory.disableOOMKiller: false` for
//! every container, and `update` requests with every field present. [`normalize`] turns each such
//! value into `None` (so the v1 and v2 writers write exactly the fields that are set) and refuses,
//! before anything is written, the values runc or the kernel would refuse. [`RULES`] is the table,
//! one row per field; each row has a unit test (`tests/unset.rs`).
//!
//! What it must never do: drop a value that means something (a hugepage limit of 0 forbids huge
//! pages; a throttle rate of 0 removes the throttle; `cpu.idle: 0` and `cpu.burst: 0` are values).

use oci_spec::runtime::{
    LinuxBlockIo, LinuxCpu, LinuxMemory, LinuxResources, LinuxWeightDeviceBuilder,
};

use crate::{CgroupError, Result};

/// One field's zero/absent semantics (the `unset` column) and its valid values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// The spec field, below `linux.resources`.
    pub field: &'static str,
    /// Values that mean "leave the current setting alone".
    pub unset: &'static str,
    /// Other special values and the valid range.
    pub values: &'static str,
}

const fn rule(field: &'static str, unset: &'static str, values: &'static str) -> Rule {
    Rule {
        field,
        unset,
        values,
    }
}

/// runc 1.1's semantics, field by field.
pub const RULES: &[Rule] = &[
    rule(
        "memory.limit",
        "absent, 0",
        "-1 unlimited; other negatives invalid",
    ),
    rule(
        "memory.reservation",
        "absent, 0",
        "-1 unlimited; other negatives invalid",
    ),
    rule(
        "memory.swap",
        "absent, 0",
        "-1 unlimited (also implied by limit -1); memory+swap >= limit",
    ),
    rule("memory.kernel", "absent, 0", "v1 only"),
    rule("memory.kernelTCP", "absent, 0", "v1 only"),
    rule("memory.swappiness", "absent, -1 (2^64-1 as u64)", "0..=100"),
    rule("memory.disableOOMKiller", "absent, false", "true: v1 only"),
    rule(
        "memory.useHierarchy",
        "absent, false",
        "true (always so on v2)",
    ),
    rule("memory.checkBeforeUpdate", "absent, false", "true"),
    rule(
        "cpu.shares",
        "absent, 0",
        "2..=262144 (v2: converted to cpu.weight)",
    ),
    rule(
        "cpu.quota",
        "absent, 0",
        "negative: no limit; else >= 1000 (µs)",
    ),
    rule("cpu.period", "absent, 0", "1000..=1000000 (µs)"),
    rule("cpu.burst", "absent", "any (0 is a value)"),
    rule("cpu.realtimeRuntime", "absent, 0", "v1 only"),
    rule("cpu.realtimePeriod", "absent, 0", "v1 only"),
    rule("cpu.cpus", "absent, \"\"", "a cpu list"),
    rule("cpu.mems", "absent, \"\"", "a node list"),
    rule("cpu.idle", "absent", "any (0 is a value)"),
    rule("pids.limit", "absent, 0", "negative: unlimited (\"max\")"),
    rule("blockIO.weight", "absent, 0", "10..=1000"),
    rule("blockIO.leafWeight", "absent, 0", "10..=1000, v1 only"),
    rule(
        "blockIO.weightDevice[].weight",
        "absent, 0",
        "10..=1000 (an entry with nothing set is dropped)",
    ),
    rule(
        "blockIO.weightDevice[].leafWeight",
        "absent, 0",
        "10..=1000, v1 only",
    ),
    rule(
        "blockIO.throttle*Device[].rate",
        "never",
        "0 removes the throttle",
    ),
    rule(
        "hugepageLimits[].limit",
        "never",
        "0 forbids huge pages of that size",
    ),
    rule("network.classID", "absent, 0", "v1 only"),
    rule("network.priorities", "absent, []", "v1 only"),
    rule(
        "rdma",
        "absent, an entry with no limit",
        "hcaHandles, hcaObjects",
    ),
    rule(
        "unified",
        "absent",
        "written as given on pure v2; refused on v1 and hybrid hosts (runc)",
    ),
    rule("devices", "never (always the spec's list)", "rules"),
];

fn invalid(field: &str, reason: String) -> CgroupError {
    CgroupError::Invalid {
        field: format!("linux.resources.{field}"),
        reason,
    }
}

/// A number that is unset at 0, or refused outside `range`.
fn ranged<T>(v: Option<T>, field: &str, range: std::ops::RangeInclusive<T>) -> Result<Option<T>>
where
    T: PartialOrd + Default + Copy + std::fmt::Display,
{
    match v {
        None => Ok(None),
        Some(x) if x == T::default() => Ok(None),
        Some(x) if !range.contains(&x) => Err(invalid(
            field,
            format!("{x} is outside {}..={}", range.start(), range.end()),
        )),
        Some(x) => Ok(Some(x)),
    }
}

/// A memory value: 0 unset, -1 unlimited, other negatives refused.
fn mem(v: Option<i64>, field: &str) -> Result<Option<i64>> {
    match v {
        None | Some(0) => Ok(None),
        Some(n) if n < -1 => Err(invalid(
            field,
            format!("{n} is negative (only -1, unlimited, is allowed)"),
        )),
        Some(n) => Ok(Some(n)),
    }
}

fn nonzero<T: PartialEq + Default>(v: Option<T>) -> Option<T> {
    v.filter(|x| *x != T::default())
}

fn memory(m: &LinuxMemory) -> Result<Option<LinuxMemory>> {
    let mut out = LinuxMemory::default();
    out.set_limit(mem(m.limit(), "memory.limit")?);
    out.set_reservation(mem(m.reservation(), "memory.reservation")?);
    out.set_swap(mem(m.swap(), "memory.swap")?);
    out.set_kernel(nonzero(m.kernel()));
    out.set_kernel_tcp(nonzero(m.kernel_tcp()));
    out.set_swappiness(match m.swappiness() {
        None | Some(u64::MAX) => None,
        Some(s) if s > 100 => {
            return Err(invalid(
                "memory.swappiness",
                format!("{s} is above 100 (valid: 0..=100, or -1 for unset)"),
            ))
        }
        Some(s) => Some(s),
    });
    out.set_disable_oom_killer(m.disable_oom_killer().filter(|&d| d));
    out.set_use_hierarchy(m.use_hierarchy().filter(|&h| h));
    out.set_check_before_update(m.check_before_update().filter(|&c| c));
    Ok((out != LinuxMemory::default()).then_some(out))
}

fn cpu(c: &LinuxCpu) -> Result<Option<LinuxCpu>> {
    let mut out = LinuxCpu::default();
    out.set_shares(ranged(c.shares(), "cpu.shares", 2..=262_144)?);
    out.set_quota(match c.quota() {
        None | Some(0) => None,
        Some(q) if q < 0 => Some(-1),
        Some(q) if q < 1000 => {
            return Err(invalid(
                "cpu.quota",
                format!("{q} is below the kernel's minimum of 1000 µs"),
            ))
        }
        Some(q) => Some(q),
    });
    out.set_period(ranged(c.period(), "cpu.period", 1000..=1_000_000)?);
    out.set_burst(c.burst());
    out.set_realtime_runtime(nonzero(c.realtime_runtime()));
    out.set_realtime_period(nonzero(c.realtime_period()));
    out.set_cpus(c.cpus().clone().filter(|s| !s.is_empty()));
    out.set_mems(c.mems().clone().filter(|s| !s.is_empty()));
    out.set_idle(c.idle());
    Ok((out != LinuxCpu::default()).then_some(out))
}

fn block_io(b: &LinuxBlockIo) -> Result<Option<LinuxBlockIo>> {
    const W: std::ops::RangeInclusive<u16> = 10..=1000;
    let mut out = b.clone();
    out.set_weight(ranged(b.weight(), "blockIO.weight", W)?);
    out.set_leaf_weight(ranged(b.leaf_weight(), "blockIO.leafWeight", W)?);
    let mut devs = Vec::new();
    for (i, d) in b.weight_device().iter().flatten().enumerate() {
        let weight = ranged(d.weight(), &format!("blockIO.weightDevice[{i}].weight"), W)?;
        let leaf = ranged(
            d.leaf_weight(),
            &format!("blockIO.weightDevice[{i}].leafWeight"),
            W,
        )?;
        if weight.is_none() && leaf.is_none() {
            continue;
        }
        let mut b = LinuxWeightDeviceBuilder::default()
            .major(d.major())
            .minor(d.minor());
        if let Some(x) = weight {
            b = b.weight(x);
        }
        if let Some(x) = leaf {
            b = b.leaf_weight(x);
        }
        devs.push(
            b.build()
                .map_err(|e| invalid(&format!("blockIO.weightDevice[{i}]"), e.to_string()))?,
        );
    }
    out.set_weight_device((!devs.is_empty()).then_some(devs));
    let empty = |l: &Option<Vec<_>>| l.as_ref().is_none_or(Vec::is_empty);
    let nothing = out.weight().is_none()
        && out.leaf_weight().is_none()
        && out.weight_device().is_none()
        && empty(out.throttle_read_bps_device())
        && empty(out.throttle_write_bps_device())
        && empty(out.throttle_read_iops_device())
        && empty(out.throttle_write_iops_device());
    Ok((!nothing).then_some(out))
}

/// `res` with every "unset" value of [`RULES`] removed (`None`), or the first field whose value
/// runc or the kernel would refuse.
pub fn normalize(res: &LinuxResources) -> Result<LinuxResources> {
    let mut out = res.clone();
    out.set_memory(res.memory().as_ref().map(memory).transpose()?.flatten());
    out.set_cpu(res.cpu().as_ref().map(cpu).transpose()?.flatten());
    out.set_pids(res.pids().filter(|p| p.limit() != 0));
    out.set_block_io(res.block_io().as_ref().map(block_io).transpose()?.flatten());
    if let Some(n) = res.network() {
        let mut n = n.clone();
        n.set_class_id(nonzero(n.class_id()));
        n.set_priorities(n.priorities().clone().filter(|p| !p.is_empty()));
        let set = n.class_id().is_some() || n.priorities().is_some();
        out.set_network(set.then_some(n));
    }
    Ok(out)
}
