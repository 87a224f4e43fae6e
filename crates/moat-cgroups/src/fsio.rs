//! Reading and writing cgroup interface files. Every resource write goes through [`Writes::set`]
//! (or [`set`]), which names the spec field and the file in its error and never creates a file: a
//! missing interface file means the controller (or the feature) is absent, and that is reported
//! as such.
//!
//! [`Writes`] lets one request be applied in two passes: a check pass that writes nothing (every
//! file must exist, every value must pass validation), then the writes, with the previous content
//! of each single-line file kept so that a value the kernel refuses part-way is undone.

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

    /// [`set`], or in the check pass only its "file exists" test.
    pub(crate) fn set(&mut self, dir: &Path, file: &str, value: &str, field: &str) -> Result<()> {
        let path = dir.join(file);
        if self.dry {
            return if path.exists() {
                Ok(())
            } else {
                Err(missing(&path, field))
            };
        }
        // Only a single-line value can be written back as read (lists such as io.max or
        // devices.list cannot).
        let old = std::fs::read_to_string(&path)
            .ok()
            .map(|s| s.trim_end_matches('\n').to_owned())
            .filter(|s| !s.is_empty() && !s.contains('\n'));
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
