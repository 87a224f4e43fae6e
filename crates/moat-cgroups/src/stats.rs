//! Resource usage of a cgroup, shaped like the `data` object of runc's `events --stats`
//! (`types.Stats` in runc's `types/events.go`, which containerd's go-runc decodes): the same JSON
//! field names, and Go's `omitempty` mirrored with `skip_serializing_if`.
//!
//! Sources: v1 `cpuacct.*`, `cpu.stat`, `memory.*`, `pids.*`, `blkio.*`, `hugetlb.*`; v2
//! `cpu.stat`, `memory.{current,peak,max,events,stat}`, `memory.swap.*`, `pids.*`, `io.stat`,
//! `hugetlb.<size>.{current,max,events}`. As runc does, v2 swap is reported as memory+swap
//! (v1's memsw), and v2 "failcnt" is the `max` count of the matching `.events` file.
//!
//! What it must never do: fail because an optional controller is absent (its section stays empty).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::fsio::{parse_u64, read, read_keyed_opt, read_u64_opt};
use crate::v1::V1Dirs;
use crate::Result;

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// The stats of one cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub cpu: Cpu,
    pub memory: Memory,
    pub pids: Pids,
    pub blkio: Blkio,
    /// By page size ("2MB", "1GB").
    pub hugetlb: BTreeMap<String, Hugetlb>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cpu {
    pub usage: CpuUsage,
    pub throttling: Throttling,
}

/// CPU time in nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuUsage {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub total: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub percpu: Vec<u64>,
    #[serde(default)]
    pub kernel: u64,
    #[serde(default)]
    pub user: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Throttling {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub periods: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub throttled_periods: u64,
    /// Nanoseconds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub throttled_time: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryEntry {
    #[serde(default)]
    pub limit: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub usage: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max: u64,
    #[serde(default)]
    pub failcnt: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache: u64,
    #[serde(default)]
    pub usage: MemoryEntry,
    #[serde(default)]
    pub swap: MemoryEntry,
    #[serde(default)]
    pub kernel: MemoryEntry,
    #[serde(default, rename = "kernelTCP")]
    pub kernel_tcp: MemoryEntry,
    /// The whole `memory.stat`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub raw: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pids {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub current: u64,
    /// 0 when unlimited.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub limit: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlkioEntry {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub major: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub minor: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub op: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub value: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Blkio {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub io_service_bytes_recursive: Vec<BlkioEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub io_serviced_recursive: Vec<BlkioEntry>,
    #[serde(
        default,
        rename = "ioQueueRecursive",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub io_queued_recursive: Vec<BlkioEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub io_service_time_recursive: Vec<BlkioEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub io_wait_time_recursive: Vec<BlkioEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub io_merged_recursive: Vec<BlkioEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub io_time_recursive: Vec<BlkioEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sectors_recursive: Vec<BlkioEntry>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hugetlb {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub usage: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max: u64,
    #[serde(default)]
    pub failcnt: u64,
}

/// USER_HZ of `cpuacct.stat` (fixed at 100 on Linux).
const NS_PER_TICK: u64 = 10_000_000;

/// A "max" limit as v1 reports it: unlimited stays `u64::MAX` in `limit`, 0 in pids.
fn pids_limit(v: u64) -> u64 {
    if v == u64::MAX {
        0
    } else {
        v
    }
}

/// Read the stats of a v1 (or hybrid) cgroup.
pub fn v1(dirs: &V1Dirs) -> Result<Stats> {
    let mut s = Stats::default();
    if let Some(d) = dirs.get("cpuacct") {
        let u = &mut s.cpu.usage;
        u.total = read_u64_opt(&d.join("cpuacct.usage"))?;
        if d.join("cpuacct.usage_percpu").exists() {
            let p = d.join("cpuacct.usage_percpu");
            let text = read(&p)?;
            u.percpu = text
                .split_whitespace()
                .map(|v| parse_u64(&p, v))
                .collect::<Result<_>>()?;
        }
        if d.join("cpuacct.usage_user").exists() {
            u.user = read_u64_opt(&d.join("cpuacct.usage_user"))?;
            u.kernel = read_u64_opt(&d.join("cpuacct.usage_sys"))?;
        } else {
            let st = read_keyed_opt(&d.join("cpuacct.stat"))?;
            u.user = st.get("user").copied().unwrap_or(0) * NS_PER_TICK;
            u.kernel = st.get("system").copied().unwrap_or(0) * NS_PER_TICK;
        }
    }
    if let Some(d) = dirs.get("cpu") {
        let st = read_keyed_opt(&d.join("cpu.stat"))?;
        s.cpu.throttling = Throttling {
            periods: st.get("nr_periods").copied().unwrap_or(0),
            throttled_periods: st.get("nr_throttled").copied().unwrap_or(0),
            throttled_time: st.get("throttled_time").copied().unwrap_or(0),
        };
    }
    if let Some(d) = dirs.get("memory") {
        let m = &mut s.memory;
        m.raw = read_keyed_opt(&d.join("memory.stat"))?;
        m.cache = m.raw.get("cache").copied().unwrap_or(0);
        m.usage = v1_mem_entry(d, "memory")?;
        m.swap = v1_mem_entry(d, "memory.memsw")?;
        m.kernel = v1_mem_entry(d, "memory.kmem")?;
        m.kernel_tcp = v1_mem_entry(d, "memory.kmem.tcp")?;
    }
    if let Some(d) = dirs.get("pids") {
        s.pids = pids(d)?;
    }
    if let Some(d) = dirs.get("blkio") {
        s.blkio = v1_blkio(d)?;
    }
    if let Some(d) = dirs.get("hugetlb") {
        for size in sizes(d, ".limit_in_bytes")? {
            let e = Hugetlb {
                usage: read_u64_opt(&d.join(format!("hugetlb.{size}.usage_in_bytes")))?,
                max: read_u64_opt(&d.join(format!("hugetlb.{size}.max_usage_in_bytes")))?,
                failcnt: read_u64_opt(&d.join(format!("hugetlb.{size}.failcnt")))?,
            };
            s.hugetlb.insert(size, e);
        }
    } else if let Some(u) = dirs.unified() {
        s.hugetlb = v2_hugetlb(u)?;
    }
    Ok(s)
}

fn v1_mem_entry(d: &Path, prefix: &str) -> Result<MemoryEntry> {
    Ok(MemoryEntry {
        limit: read_u64_opt(&d.join(format!("{prefix}.limit_in_bytes")))?,
        usage: read_u64_opt(&d.join(format!("{prefix}.usage_in_bytes")))?,
        max: read_u64_opt(&d.join(format!("{prefix}.max_usage_in_bytes")))?,
        failcnt: read_u64_opt(&d.join(format!("{prefix}.failcnt")))?,
    })
}

fn pids(d: &Path) -> Result<Pids> {
    Ok(Pids {
        current: read_u64_opt(&d.join("pids.current"))?,
        limit: pids_limit(read_u64_opt(&d.join("pids.max"))?),
    })
}

/// Parse v1 blkio lines "8:0 Read 4096" (the trailing "Total N" line is skipped).
pub(crate) fn parse_blkio_v1(text: &str) -> Vec<BlkioEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (dev, op, value) = match f.as_slice() {
                [dev, op, value] => (*dev, (*op).to_owned(), *value),
                // Files without an operation ("blkio.sectors_recursive": "8:0 1234").
                [dev, value] if dev.contains(':') => (*dev, String::new(), *value),
                _ => return None,
            };
            let (maj, min) = dev.split_once(':')?;
            Some(BlkioEntry {
                major: maj.parse().ok()?,
                minor: min.parse().ok()?,
                op,
                value: value.parse().ok()?,
            })
        })
        .collect()
}

fn v1_blkio(d: &Path) -> Result<Blkio> {
    let read_list = |file: &str| -> Result<Vec<BlkioEntry>> {
        let p = d.join(file);
        if p.exists() {
            Ok(parse_blkio_v1(&read(&p)?))
        } else {
            Ok(Vec::new())
        }
    };
    // As runc: the CFQ files, else BFQ's, else the throttle policy's (always accounted).
    let mut b = Blkio::default();
    for prefix in ["blkio.", "blkio.bfq.", "blkio.throttle."] {
        b.io_service_bytes_recursive = read_list(&format!("{prefix}io_service_bytes_recursive"))?;
        b.io_serviced_recursive = read_list(&format!("{prefix}io_serviced_recursive"))?;
        if !b.io_service_bytes_recursive.is_empty() || !b.io_serviced_recursive.is_empty() {
            if prefix != "blkio.throttle." {
                b.io_queued_recursive = read_list(&format!("{prefix}io_queued_recursive"))?;
                b.io_service_time_recursive =
                    read_list(&format!("{prefix}io_service_time_recursive"))?;
                b.io_wait_time_recursive = read_list(&format!("{prefix}io_wait_time_recursive"))?;
                b.io_merged_recursive = read_list(&format!("{prefix}io_merged_recursive"))?;
                b.io_time_recursive = read_list(&format!("{prefix}time_recursive"))?;
                b.sectors_recursive = read_list(&format!("{prefix}sectors_recursive"))?;
            }
            break;
        }
    }
    Ok(b)
}

/// The hugepage sizes of the files `hugetlb.<size><suffix>` in `d`.
fn sizes(d: &Path, suffix: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(d) else {
        return Ok(out);
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(size) = name
            .strip_prefix("hugetlb.")
            .and_then(|n| n.strip_suffix(suffix))
        {
            if !size.contains('.') {
                out.push(size.to_owned());
            }
        }
    }
    out.sort();
    Ok(out)
}

fn v2_hugetlb(d: &Path) -> Result<BTreeMap<String, Hugetlb>> {
    let mut out = BTreeMap::new();
    for size in sizes(d, ".max")? {
        let ev = read_keyed_opt(&d.join(format!("hugetlb.{size}.events")))?;
        let e = Hugetlb {
            usage: read_u64_opt(&d.join(format!("hugetlb.{size}.current")))?,
            max: 0,
            failcnt: ev.get("max").copied().unwrap_or(0),
        };
        out.insert(size, e);
    }
    Ok(out)
}

/// Parse v2 `io.stat` lines "8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0".
pub(crate) fn parse_io_stat(text: &str) -> Blkio {
    let mut b = Blkio::default();
    for l in text.lines() {
        let mut f = l.split_whitespace();
        let Some((maj, min)) = f.next().and_then(|d| d.split_once(':')) else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (maj.parse(), min.parse()) else {
            continue;
        };
        for kv in f {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let Ok(value) = v.parse() else { continue };
            let (list, op) = match k {
                "rbytes" => (&mut b.io_service_bytes_recursive, "Read"),
                "wbytes" => (&mut b.io_service_bytes_recursive, "Write"),
                "rios" => (&mut b.io_serviced_recursive, "Read"),
                "wios" => (&mut b.io_serviced_recursive, "Write"),
                _ => continue,
            };
            list.push(BlkioEntry {
                major,
                minor,
                op: op.into(),
                value,
            });
        }
    }
    b
}

/// Read the stats of a v2 cgroup.
pub fn v2(d: &Path) -> Result<Stats> {
    let mut s = Stats::default();
    let cpu = read_keyed_opt(&d.join("cpu.stat"))?;
    let us = |k: &str| cpu.get(k).copied().unwrap_or(0) * 1000;
    s.cpu.usage = CpuUsage {
        total: us("usage_usec"),
        percpu: Vec::new(),
        kernel: us("system_usec"),
        user: us("user_usec"),
    };
    s.cpu.throttling = Throttling {
        periods: cpu.get("nr_periods").copied().unwrap_or(0),
        throttled_periods: cpu.get("nr_throttled").copied().unwrap_or(0),
        throttled_time: us("throttled_usec"),
    };
    if d.join("memory.current").exists() {
        let m = &mut s.memory;
        m.raw = read_keyed_opt(&d.join("memory.stat"))?;
        m.cache = m.raw.get("file").copied().unwrap_or(0);
        m.usage = v2_mem_entry(d, "memory")?;
        if d.join("memory.swap.current").exists() {
            let mut sw = v2_mem_entry(d, "memory.swap")?;
            // Reported as memory+swap, like v1's memsw.
            sw.usage = sw.usage.saturating_add(m.usage.usage);
            if sw.limit != u64::MAX {
                sw.limit = sw.limit.saturating_add(m.usage.limit);
            }
            sw.max = 0;
            m.swap = sw;
        }
    }
    if d.join("pids.current").exists() {
        s.pids = pids(d)?;
    }
    if d.join("io.stat").exists() {
        s.blkio = parse_io_stat(&read(&d.join("io.stat"))?);
    }
    s.hugetlb = v2_hugetlb(d)?;
    Ok(s)
}

fn v2_mem_entry(d: &Path, prefix: &str) -> Result<MemoryEntry> {
    let ev = read_keyed_opt(&d.join(format!("{prefix}.events")))?;
    Ok(MemoryEntry {
        limit: read_u64_opt(&d.join(format!("{prefix}.max")))?,
        usage: read_u64_opt(&d.join(format!("{prefix}.current")))?,
        max: read_u64_opt(&d.join(format!("{prefix}.peak")))?,
        failcnt: ev.get("max").copied().unwrap_or(0),
    })
}
