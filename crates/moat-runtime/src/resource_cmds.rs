//! The resource commands of runc's CLI: `pause`, `resume`, `update`, `ps`, `events`. They map to
//! the container's cgroup through `moat-container`; `update`'s individual flags are translated into
//! an OCI `LinuxResources` here, at the edge. Zero values mean "unchanged" as in runc, and an
//! `update` is checked whole before anything is written (`moat_cgroups::Cgroup::update`).

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use moat_container::{state::Status, Store};
use serde_json::{json, Map, Value};

/// runc's `update` flags.
#[derive(clap::Args, Debug)]
pub struct UpdateArgs {
    /// Read the new resources (OCI `linux.resources` JSON) from FILE, or stdin with "-".
    #[arg(short, long, value_name = "FILE")]
    pub resources: Option<PathBuf>,
    /// Memory limit in bytes (suffixes k, m, g accepted; -1 for unlimited).
    #[arg(long)]
    pub memory: Option<String>,
    /// Memory reservation (soft limit) in bytes.
    #[arg(long)]
    pub memory_reservation: Option<String>,
    /// Memory plus swap limit in bytes (-1 for unlimited).
    #[arg(long)]
    pub memory_swap: Option<String>,
    /// Kernel memory limit (deprecated; refused by cgroup v2 and recent kernels).
    #[arg(long)]
    pub kernel_memory: Option<String>,
    /// CPU shares (relative weight, 2-262144; 0 leaves them unchanged).
    #[arg(long)]
    pub cpu_shares: Option<u64>,
    /// CPU CFS quota in microseconds per period (-1 for none).
    #[arg(long, allow_hyphen_values = true)]
    pub cpu_quota: Option<i64>,
    /// CPU CFS period in microseconds.
    #[arg(long)]
    pub cpu_period: Option<u64>,
    /// CPU realtime period in microseconds.
    #[arg(long)]
    pub cpu_rt_period: Option<u64>,
    /// CPU realtime runtime in microseconds.
    #[arg(long, allow_hyphen_values = true)]
    pub cpu_rt_runtime: Option<i64>,
    /// CPUs allowed (e.g. 0-1).
    #[arg(long)]
    pub cpuset_cpus: Option<String>,
    /// Memory nodes allowed (e.g. 0).
    #[arg(long)]
    pub cpuset_mems: Option<String>,
    /// Maximum number of processes (-1 for unlimited; 0 leaves it unchanged, as in runc).
    #[arg(long, allow_hyphen_values = true)]
    pub pids_limit: Option<i64>,
    /// Block IO weight (10-1000; 0 leaves it unchanged).
    #[arg(long)]
    pub blkio_weight: Option<u16>,
    /// Intel RDT L3 cache schema (not supported).
    #[arg(long)]
    pub l3_cache_schema: Option<String>,
    /// Intel RDT memory bandwidth schema (not supported).
    #[arg(long)]
    pub mem_bw_schema: Option<String>,
    pub id: String,
}

/// Parse "512m", "1G", "1048576", "-1".
pub fn parse_bytes(s: &str) -> Result<i64> {
    let t = s.trim();
    if t == "-1" {
        return Ok(-1);
    }
    let lower = t.to_ascii_lowercase();
    let lower = lower.trim_end_matches('b');
    let (num, mult) = match lower.chars().last() {
        Some('k') => (&lower[..lower.len() - 1], 1i64 << 10),
        Some('m') => (&lower[..lower.len() - 1], 1 << 20),
        Some('g') => (&lower[..lower.len() - 1], 1 << 30),
        Some('t') => (&lower[..lower.len() - 1], 1 << 40),
        _ => (lower, 1),
    };
    let n: f64 = num.parse().with_context(|| {
        format!("invalid size {s:?}: use bytes with an optional k, m, g suffix")
    })?;
    Ok((n * mult as f64) as i64)
}

fn set(obj: &mut Map<String, Value>, section: &str, key: &str, v: Value) {
    obj.entry(section)
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("section is an object")
        .insert(key.into(), v);
}

pub fn update(store: &Store, a: &UpdateArgs) -> Result<()> {
    if a.l3_cache_schema.is_some() || a.mem_bw_schema.is_some() {
        bail!("update container {}: Intel RDT (--l3-cache-schema, --mem-bw-schema) is not supported by moat", a.id);
    }
    let mut obj: Map<String, Value> = match &a.resources {
        Some(p) => {
            let mut text = String::new();
            if p.as_os_str() == "-" {
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("read resources from stdin")?;
            } else {
                text = std::fs::read_to_string(p)
                    .with_context(|| format!("read resources {}", p.display()))?;
            }
            serde_json::from_str(&text)
                .with_context(|| format!("parse resources {}", p.display()))?
        }
        None => Map::new(),
    };
    if let Some(v) = &a.memory {
        set(&mut obj, "memory", "limit", json!(parse_bytes(v)?));
    }
    if let Some(v) = &a.memory_reservation {
        set(&mut obj, "memory", "reservation", json!(parse_bytes(v)?));
    }
    if let Some(v) = &a.memory_swap {
        set(&mut obj, "memory", "swap", json!(parse_bytes(v)?));
    }
    if let Some(v) = &a.kernel_memory {
        set(&mut obj, "memory", "kernel", json!(parse_bytes(v)?));
    }
    if let Some(v) = a.cpu_shares {
        set(&mut obj, "cpu", "shares", json!(v));
    }
    if let Some(v) = a.cpu_quota {
        set(&mut obj, "cpu", "quota", json!(v));
    }
    if let Some(v) = a.cpu_period {
        set(&mut obj, "cpu", "period", json!(v));
    }
    if let Some(v) = a.cpu_rt_period {
        set(&mut obj, "cpu", "realtimePeriod", json!(v));
    }
    if let Some(v) = a.cpu_rt_runtime {
        set(&mut obj, "cpu", "realtimeRuntime", json!(v));
    }
    if let Some(v) = &a.cpuset_cpus {
        set(&mut obj, "cpu", "cpus", json!(v));
    }
    if let Some(v) = &a.cpuset_mems {
        set(&mut obj, "cpu", "mems", json!(v));
    }
    if let Some(v) = a.pids_limit {
        set(&mut obj, "pids", "limit", json!(v));
    }
    if let Some(v) = a.blkio_weight {
        set(&mut obj, "blockIO", "weight", json!(v));
    }
    let res: oci_spec::runtime::LinuxResources = serde_json::from_value(Value::Object(obj))
        .with_context(|| format!("update container {}: invalid resources", a.id))?;
    moat_container::pause::update(store, &a.id, &res)
        .with_context(|| format!("update container {}", a.id))?;
    Ok(())
}

/// `ps ID [ps args]`: the container's processes; `--format json` prints their pids.
pub fn ps(store: &Store, id: &str, format: &str, ps_args: &[String]) -> Result<()> {
    let st = store.load(id)?;
    // A rootless container whose cgroup was not writable has none: its processes cannot be
    // listed (runc fails the same way).
    let Some(cg) = st.cgroup.as_ref() else {
        bail!("container {id} has no cgroup (rootless, not delegated): its processes cannot be listed");
    };
    let mut pids = cg.pids()?;
    pids.sort_unstable();
    pids.dedup();
    if format == "json" {
        println!("{}", serde_json::to_string(&pids)?);
        return Ok(());
    }
    let args: Vec<String> = if ps_args.is_empty() {
        vec!["-ef".into()]
    } else {
        ps_args.to_vec()
    };
    let out = std::process::Command::new("ps")
        .args(&args)
        .output()
        .context("run ps")?;
    if !out.status.success() {
        bail!(
            "ps {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let col = header
        .split_whitespace()
        .position(|h| h == "PID")
        .context("ps output has no PID column")?;
    println!("{header}");
    for l in lines {
        if let Some(pid) = l
            .split_whitespace()
            .nth(col)
            .and_then(|p| p.parse::<i32>().ok())
        {
            if pids.contains(&pid) {
                println!("{l}");
            }
        }
    }
    Ok(())
}

/// `events ID`: with --stats one stats event; otherwise stream stats every interval and an
/// `oom` event whenever the kernel OOM-kills a process of the container, until it stops.
pub fn events(store: &Store, id: &str, stats_once: bool, interval: Duration) -> Result<()> {
    let st = store.load(id)?;
    let cg = st
        .cgroup
        .clone()
        .with_context(|| format!("container {id} has no cgroup"))?;
    let stats_event = |cg: &moat_cgroups::Cgroup| -> Result<Value> {
        Ok(json!({"type": "stats", "id": id, "data": cg.stats()?}))
    };
    if stats_once {
        println!("{}", stats_event(&cg)?);
        return Ok(());
    }
    let mut ooms = cg.oom_kill_count().unwrap_or(0);
    let tick = Duration::from_millis(100).min(interval);
    let mut since_stats = Duration::ZERO;
    use std::io::Write;
    loop {
        if store.status(&st) == Status::Stopped {
            let n = cg.oom_kill_count().unwrap_or(ooms);
            if n > ooms {
                println!("{}", json!({"type": "oom", "id": id}));
            }
            return Ok(());
        }
        let n = cg.oom_kill_count().unwrap_or(ooms);
        if n > ooms {
            ooms = n;
            println!("{}", json!({"type": "oom", "id": id}));
        }
        if since_stats >= interval {
            since_stats = Duration::ZERO;
            if let Ok(ev) = stats_event(&cg) {
                println!("{ev}");
            }
        }
        let _ = std::io::stdout().flush();
        std::thread::sleep(tick);
        since_stats += tick;
    }
}

/// Parse runc's `--interval` ("5s", "100ms", "1m").
pub fn parse_interval(s: &str) -> Result<Duration> {
    let (num, unit) = s.trim().split_at(
        s.trim()
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.trim().len()),
    );
    let n: f64 = num
        .parse()
        .with_context(|| format!("invalid interval {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => bail!("invalid interval {s:?}: use a number with s, ms, m or h"),
    };
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("512k").unwrap(), 512 * 1024);
        assert_eq!(parse_bytes("1G").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("1.5m").unwrap(), 3 << 19);
        assert_eq!(parse_bytes("-1").unwrap(), -1);
        assert_eq!(parse_bytes("100").unwrap(), 100);
        assert!(parse_bytes("lots").is_err());
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_interval("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_interval("5x").is_err());
    }
}
