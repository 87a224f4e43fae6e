//! Value conversions and validations shared by the v1 and v2 writers.

use std::collections::HashMap;
use std::path::Path;

use oci_spec::runtime::LinuxRdma;

use crate::fsio::{read_u64, Writes};
use crate::{CgroupError, Result};

/// `pids.max` value: a limit below 1 means unlimited.
pub(crate) fn pids_max(limit: i64) -> String {
    if limit <= 0 {
        "max".into()
    } else {
        limit.to_string()
    }
}

/// A memory value of the spec: absent or 0 means "leave as is", -1 means unlimited, other
/// negatives are invalid.
pub(crate) fn mem_value(v: Option<i64>, field: &str) -> Result<Option<i64>> {
    match v {
        None | Some(0) => Ok(None),
        Some(-1) => Ok(Some(-1)),
        Some(n) if n < 0 => Err(CgroupError::Invalid {
            field: field.into(),
            reason: format!("{n} is negative (only -1, unlimited, is allowed)"),
        }),
        Some(n) => Ok(Some(n)),
    }
}

/// The v2 spelling of a memory value: -1 is "max".
pub(crate) fn v2_num(v: i64) -> String {
    if v < 0 {
        "max".into()
    } else {
        v.to_string()
    }
}

/// A v1 limit where any negative means unlimited (-1).
pub(crate) fn signed_limit(v: i64) -> String {
    if v < 0 {
        "-1".into()
    } else {
        v.to_string()
    }
}

/// Validate a hugepage size ("2MB", "1GB"): it becomes part of a file name.
pub(crate) fn page_size<'a>(size: &'a str, field: &str) -> Result<&'a str> {
    if size.is_empty() || !size.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(CgroupError::Invalid {
            field: format!("{field}.pageSize"),
            reason: format!("{size:?} is not a page size such as \"2MB\""),
        });
    }
    Ok(size)
}

/// `checkBeforeUpdate`: refuse a memory limit below the current usage read from `usage`.
pub(crate) fn check_usage(usage: &Path, limit: i64, field: &str) -> Result<()> {
    let cur = read_u64(usage)?;
    if (limit as u64) < cur {
        return Err(CgroupError::Invalid {
            field: field.into(),
            reason: format!(
                "{limit} is below the current usage {cur} ({}) and checkBeforeUpdate is set",
                usage.display()
            ),
        });
    }
    Ok(())
}

/// The `rdma.max` line of one device; `None` if neither limit is set.
pub(crate) fn rdma_line(dev: &str, r: &LinuxRdma) -> Option<String> {
    let mut line = dev.to_owned();
    if let Some(h) = r.hca_handles() {
        line.push_str(&format!(" hca_handle={h}"));
    }
    if let Some(o) = r.hca_objects() {
        line.push_str(&format!(" hca_object={o}"));
    }
    (line.len() > dev.len()).then_some(line)
}

/// Write `rdma.max` (same format on v1 and v2), one device per write, in name order.
pub(crate) fn rdma(w: &mut Writes, dir: &Path, map: &HashMap<String, LinuxRdma>) -> Result<()> {
    let mut devs: Vec<_> = map.iter().collect();
    devs.sort_by(|a, b| a.0.cmp(b.0));
    for (dev, r) in devs {
        let field = format!("linux.resources.rdma[{dev:?}]");
        if dev.is_empty() || dev.contains(char::is_whitespace) {
            return Err(CgroupError::Invalid {
                field,
                reason: "device name is empty or has blanks".into(),
            });
        }
        if let Some(line) = rdma_line(dev, r) {
            w.set(dir, "rdma.max", &line, &field)?;
        }
    }
    Ok(())
}

/// cpu.shares (v1, 2..262144) to cpu.weight (v2, 1..10000), as runc converts it.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    let s = shares.clamp(2, 262_144);
    1 + ((s - 2) * 9999) / 262_142
}

/// blkio.weight (v1, 10..1000) to io.weight (v2, 1..10000), as runc converts it.
pub fn blkio_weight_to_io(weight: u16) -> u64 {
    if weight == 0 {
        return 0;
    }
    let w = u64::from(weight.clamp(10, 1000));
    1 + (w - 10) * 9999 / 990
}
