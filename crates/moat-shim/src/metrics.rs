//! Container stats as containerd expects them from a shim: the cgroups v1 `Metrics` message
//! (type URL `io.containerd.cgroups.v1.Metrics`), which `ctr task metrics` and the CRI plugin read.

use containerd_shim::protos::cgroups::metrics::{
    BlkIOEntry, BlkIOStat, CPUStat, CPUUsage, HugetlbStat, MemoryEntry, MemoryStat, Metrics,
    PidsStat, Throttle,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::Message;

fn mem_entry(e: &moat_cgroups::stats::MemoryEntry) -> MemoryEntry {
    MemoryEntry {
        limit: e.limit,
        usage: e.usage,
        max: e.max,
        failcnt: e.failcnt,
        ..Default::default()
    }
}

fn blk(v: &[moat_cgroups::stats::BlkioEntry]) -> Vec<BlkIOEntry> {
    v.iter()
        .map(|e| BlkIOEntry {
            op: e.op.clone(),
            major: e.major,
            minor: e.minor,
            value: e.value,
            ..Default::default()
        })
        .collect()
}

/// Convert moat's stats into containerd's v1 metrics.
pub fn to_metrics(s: &moat_cgroups::Stats) -> Metrics {
    let raw = |k: &str| s.memory.raw.get(k).copied().unwrap_or(0);
    let mut m = Metrics::new();
    m.pids = Some(PidsStat {
        current: s.pids.current,
        limit: s.pids.limit,
        ..Default::default()
    })
    .into();
    m.cpu = Some(CPUStat {
        usage: Some(CPUUsage {
            total: s.cpu.usage.total,
            kernel: s.cpu.usage.kernel,
            user: s.cpu.usage.user,
            per_cpu: s.cpu.usage.percpu.clone(),
            ..Default::default()
        })
        .into(),
        throttling: Some(Throttle {
            periods: s.cpu.throttling.periods,
            throttled_periods: s.cpu.throttling.throttled_periods,
            throttled_time: s.cpu.throttling.throttled_time,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    })
    .into();
    m.memory = Some(MemoryStat {
        cache: s.memory.cache,
        rss: raw("rss").max(raw("anon")),
        mapped_file: raw("mapped_file"),
        dirty: raw("dirty"),
        writeback: raw("writeback"),
        pg_fault: raw("pgfault"),
        pg_maj_fault: raw("pgmajfault"),
        inactive_anon: raw("inactive_anon"),
        active_anon: raw("active_anon"),
        inactive_file: raw("inactive_file"),
        active_file: raw("active_file"),
        unevictable: raw("unevictable"),
        total_cache: raw("total_cache"),
        total_rss: raw("total_rss"),
        total_inactive_file: raw("total_inactive_file"),
        usage: Some(mem_entry(&s.memory.usage)).into(),
        swap: Some(mem_entry(&s.memory.swap)).into(),
        kernel: Some(mem_entry(&s.memory.kernel)).into(),
        kernel_tcp: Some(mem_entry(&s.memory.kernel_tcp)).into(),
        ..Default::default()
    })
    .into();
    m.blkio = Some(BlkIOStat {
        io_service_bytes_recursive: blk(&s.blkio.io_service_bytes_recursive),
        io_serviced_recursive: blk(&s.blkio.io_serviced_recursive),
        io_queued_recursive: blk(&s.blkio.io_queued_recursive),
        io_service_time_recursive: blk(&s.blkio.io_service_time_recursive),
        io_wait_time_recursive: blk(&s.blkio.io_wait_time_recursive),
        io_merged_recursive: blk(&s.blkio.io_merged_recursive),
        io_time_recursive: blk(&s.blkio.io_time_recursive),
        sectors_recursive: blk(&s.blkio.sectors_recursive),
        ..Default::default()
    })
    .into();
    m.hugetlb = s
        .hugetlb
        .iter()
        .map(|(size, h)| HugetlbStat {
            pagesize: size.clone(),
            usage: h.usage,
            max: h.max,
            failcnt: h.failcnt,
            ..Default::default()
        })
        .collect();
    m
}

/// Pack metrics into the `Any` of a StatsResponse.
pub fn to_any(m: &Metrics) -> Any {
    Any {
        type_url: "io.containerd.cgroups.v1.Metrics".into(),
        value: m.write_to_bytes().unwrap_or_default(),
        ..Default::default()
    }
}
