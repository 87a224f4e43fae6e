//! Reading and writing cgroup interface files. Every resource write goes through [`Writes::set`]
//! (or [`set`]), which names the spec field and the file in its error and never creates a file: a
//! missing interface file means the controller (or the feature) is absent, and that is reported
//! as such.
//!
//! [`Writes`] lets one request be applied in two passes: a check pass that writes nothing (every
//! file must exist, every value must pass validation, every block device named must exist), then
//! the writes, with the previous content of each single-line file, and each device's line of a
//! per-device file (io.max, blkio throttles and weights), kept so that a value the kernel refuses
//! part-way is undone.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::{CgroupError, Result};

pub(crate) fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.into(),
        value: value.into(),
        source,
    })
}

pub(crate) fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.into(),
        source,
    })
}

/// Whether `dir/file` exists.
pub(crate) fn has(dir: &Path, file: &str) -> bool {
    dir.join(file).exists()
}

/// Write `value` to the existing interface file `dir/file` on behalf of spec field `field`.
pub(crate) fn set(dir: &Path, file: &str, value: &str, field: &str) -> Result<()> {
    let path = dir.join(file);
    let res = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .and_then(|mut f| f.write_all(value.as_bytes()));
    match res {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(missing(&path, field)),
        Err(source) => Err(CgroupError::Resource {
            field: field.into(),
            path,
            value: value.into(),
            source,
        }),
    }
}

/// Where the resource writes of one request go.
#[derive(Debug, Default)]
pub(crate) struct Writes {
    dry: bool,
    /// (file, previous content) of each file written, in order.
    undo: Vec<(PathBuf, String)>,
}

impl Writes {
    /// Check only: [`Writes::set`] verifies the file exists and writes nothing.
    pub(crate) fn check() -> Writes {
        Writes {
            dry: true,
            undo: Vec::new(),
        }
    }

    /// Write for real, remembering what to restore.
    pub(crate) fn live() -> Writes {
        Writes::default()
    }

    /// Whether this is the check pass (steps that are not file writes skip their effect).
    pub(crate) fn is_check(&self) -> bool {
        self.dry
    }

    /// [`set`], or in the check pass only its "file exists" test (and, for a per-device value
    /// such as `8:0 1048576`, that the block device exists: the kernel would refuse it part-way).
    pub(crate) fn set(&mut self, dir: &Path, file: &str, value: &str, field: &str) -> Result<()> {
        let path = dir.join(file);
        let device = device_key(value);
        if self.dry {
            if !path.exists() {
                return Err(missing(&path, field));
            }
            if let Some(dev) = device {
                if !Path::new("/sys/dev/block").join(dev).exists() {
                    return Err(CgroupError::Unsupported(format!(
                        "{field}: block device {dev} does not exist"
                    )));
                }
            }
            return Ok(());
        }
        let content = std::fs::read_to_string(&path).unwrap_or_default();
        let old = match device {
            // A per-device file lists one line per device: restore that device's line, or
            // lift the limit this write set.
            Some(dev) => Some(
                content
                    .lines()
                    .find(|l| l.split_whitespace().next() == Some(dev))
                    .map(str::to_owned)
                    .unwrap_or_else(|| per_device_reset(file, dev)),
            ),
            // Single-line files are written back as read; other lists (devices.list) cannot be.
            None => Some(content.trim_end_matches('\n').to_owned())
                .filter(|s| !s.is_empty() && !s.contains('\n')),
        };
        set(dir, file, value, field)?;
        if let Some(old) = old {
            self.undo.push((path, old));
        }
        Ok(())
    }

    /// Restore, newest first and best effort, the files written so far.
    pub(crate) fn rollback(self) {
        for (path, old) in self.undo.into_iter().rev() {
            let _ = std::fs::write(&path, &old);
        }
    }
}

/// The `MAJ:MIN` a per-device value starts with, if it does.
fn device_key(value: &str) -> Option<&str> {
    let key = value.split_whitespace().next()?;
    let (maj, min) = key.split_once(':')?;
    (!maj.is_empty()
        && !min.is_empty()
        && maj.bytes().all(|b| b.is_ascii_digit())
        && min.bytes().all(|b| b.is_ascii_digit()))
    .then_some(key)
}

/// The line that lifts what a per-device write set, for a device the file did not list before.
fn per_device_reset(file: &str, dev: &str) -> String {
    match file {
        "io.max" => format!("{dev} rbps=max wbps=max riops=max wiops=max"),
        "io.weight" | "io.bfq.weight" => format!("{dev} default"),
        // v1 blkio throttles and weights: 0 removes the device's entry.
        _ => format!("{dev} 0"),
    }
}

fn missing(path: &Path, field: &str) -> CgroupError {
    CgroupError::Unsupported(format!(
        "{field}: {} does not exist (controller not available or feature not supported by this kernel)",
        path.display()
    ))
}

/// Parse a single number; "max" reads as `u64::MAX`.
pub(crate) fn parse_u64(path: &Path, s: &str) -> Result<u64> {
    let s = s.trim();
    if s == "max" {
        return Ok(u64::MAX);
    }
    s.parse().map_err(|_| CgroupError::Parse {
        path: path.into(),
        reason: format!("expected a number, got {s:?}"),
    })
}

/// Read a single-number file; "max" reads as `u64::MAX`.
pub(crate) fn read_u64(path: &Path) -> Result<u64> {
    parse_u64(path, &read(path)?)
}

/// Read a single-number file if it exists; 0 when it does not.
pub(crate) fn read_u64_opt(path: &Path) -> Result<u64> {
    if path.exists() {
        read_u64(path)
    } else {
        Ok(0)
    }
}

/// Parse a flat keyed file ("key value" per line); values that are not numbers are skipped.
pub(crate) fn parse_keyed(s: &str) -> BTreeMap<String, u64> {
    s.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(char::is_whitespace)?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

/// Read a flat keyed file, or an empty map if it does not exist.
pub(crate) fn read_keyed_opt(path: &Path) -> Result<BTreeMap<String, u64>> {
    if path.exists() {
        Ok(parse_keyed(&read(path)?))
    } else {
        Ok(BTreeMap::new())
    }
}

/// One key of a flat keyed file (0 if the key is absent, error if the file is absent).
pub(crate) fn keyed_u64(path: &Path, key: &str) -> Result<u64> {
    Ok(parse_keyed(&read(path)?).get(key).copied().unwrap_or(0))
}

#[cfg(test)]
mod per_device_tests {
    use super::*;

    #[test]
    fn per_device_values_are_recognised_and_reset() {
        assert_eq!(device_key("8:0 1048576"), Some("8:0"));
        assert_eq!(device_key("259:3 rbps=1 wbps=max"), Some("259:3"));
        assert_eq!(device_key("100"), None);
        assert_eq!(device_key("default 100"), None);
        assert_eq!(device_key("a *:* rwm"), None);
        assert_eq!(
            per_device_reset("io.max", "8:0"),
            "8:0 rbps=max wbps=max riops=max wiops=max"
        );
        assert_eq!(per_device_reset("io.weight", "8:0"), "8:0 default");
        assert_eq!(
            per_device_reset("blkio.throttle.read_bps_device", "8:0"),
            "8:0 0"
        );
    }

    #[test]
    fn the_check_pass_refuses_a_missing_block_device() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("io.max"), "").unwrap();
        let e = Writes::check()
            .set(
                d.path(),
                "io.max",
                "4095:4095 rbps=1",
                "linux.resources.blockIO",
            )
            .unwrap_err();
        assert!(e.to_string().contains("block device 4095:4095"), "{e}");
    }

    #[test]
    fn a_refused_update_restores_each_devices_line() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("io.max");
        std::fs::write(&f, "8:0 rbps=100 wbps=max riops=max wiops=max\n").unwrap();
        let mut w = Writes::live();
        w.set(d.path(), "io.max", "8:0 rbps=5", "f").unwrap();
        w.set(d.path(), "io.max", "8:16 wbps=7", "f").unwrap();
        w.rollback();
        // A regular file keeps only the last write: the restore of 8:0, written last.
        assert_eq!(
            std::fs::read_to_string(&f).unwrap(),
            "8:0 rbps=100 wbps=max riops=max wiops=max"
        );
    }
}
