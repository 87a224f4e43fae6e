//! The bind mounts of a VM container's spec, turned into what the VM shares with its guest: each
//! source is bound (in virtiofsd's private mount namespace, see `moat_vm::virtiofs`) at
//! `<container id>/<mount index>` of the VM's shared directory, and the agent is told where.
//!
//! What it must never do: share a path the spec did not name, or share a read-only bind
//! writable. Every source is checked here, before anything of the VM exists.

use std::path::{Path, PathBuf};

use moat_agent_proto::{InlineFile, SharedMount, INLINE_FILE_MAX};
use moat_vm::{SharedBind, SharedDir};
use oci_spec::runtime::Spec;

use super::error::{Result, VmBackendError};

/// What the VM shares for one container, and what the agent needs to use it.
#[derive(Debug, Default)]
pub(super) struct SharePlan {
    pub dir: SharedDir,
    pub mounts: Vec<SharedMount>,
}

impl SharePlan {
    /// The binds as files sent with the create request instead of a shared directory, when
    /// every one is a regular file of at most [`INLINE_FILE_MAX`] bytes (moat's /etc/hosts,
    /// /etc/resolv.conf, /etc/hostname); `None` otherwise. The guest gets a copy: later changes
    /// on the host are not seen (Kata copies such files the same way).
    pub(super) fn inline_files(&self) -> Option<Vec<InlineFile>> {
        use std::os::unix::fs::PermissionsExt;
        self.dir
            .binds
            .iter()
            .zip(&self.mounts)
            .map(|(b, m)| {
                let md = std::fs::metadata(&b.source).ok()?;
                if !md.is_file() || md.len() > INLINE_FILE_MAX {
                    return None;
                }
                Some(InlineFile {
                    index: m.index,
                    content: std::fs::read(&b.source).ok()?,
                    mode: md.permissions().mode() & 0o7777,
                    readonly: m.readonly,
                })
            })
            .collect()
    }
}

fn is_bind(m: &oci_spec::runtime::Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|x| x == "bind" || x == "rbind"))
}

/// The last of `ro`/`rw` wins, as in mount(8).
fn readonly(opts: &[String]) -> bool {
    opts.iter()
        .rev()
        .find(|o| *o == "ro" || *o == "rw")
        .is_some_and(|o| o == "ro")
}

/// The share plan of container `id` (empty when it has no bind mounts). Relative sources are
/// relative to the bundle.
pub(super) fn plan(spec: &Spec, bundle: &Path, id: &str) -> Result<SharePlan> {
    let mut p = SharePlan::default();
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        if !is_bind(m) {
            continue;
        }
        let dest = m.destination().display();
        let src = m.source().as_ref().ok_or_else(|| {
            VmBackendError::Invalid(format!("bind mount at {dest} has no source"))
        })?;
        let source: PathBuf = if src.is_absolute() {
            src.clone()
        } else {
            bundle.join(src)
        };
        let md = std::fs::metadata(&source).map_err(|e| {
            VmBackendError::Invalid(format!(
                "bind mount at {dest}: source {}: {e}",
                source.display()
            ))
        })?;
        if !md.is_dir() && !md.is_file() {
            return Err(VmBackendError::Unsupported(format!(
                "bind mount at {dest}: source {} is neither a directory nor a regular file; \
                 a VM container can only share those",
                source.display()
            )));
        }
        let opts = m.options().clone().unwrap_or_default();
        let ro = readonly(&opts);
        let target = format!("{id}/{i}");
        p.dir.binds.push(SharedBind {
            source,
            target: target.clone().into(),
            readonly: ro,
            recursive: opts.iter().any(|o| o == "rbind"),
            propagate: moat_container::mountopts::receives_propagation(&opts),
        });
        p.mounts.push(SharedMount {
            index: i as u32,
            path: target,
            readonly: ro,
        });
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_are_planned_and_missing_sources_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.2.0",
            "root": {"path": "rootfs"},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/a", "type": "bind", "source": "data", "options": ["rbind", "rw", "ro"]},
                {"destination": "/b", "source": "/", "options": ["bind"]},
            ]
        }))
        .unwrap();
        let p = plan(&spec, dir.path(), "c1").unwrap();
        assert_eq!(p.mounts.len(), 2);
        assert_eq!(p.mounts[0].index, 1);
        assert_eq!(p.mounts[0].path, "c1/1");
        assert!(p.mounts[0].readonly);
        assert!(p.dir.binds[0].recursive);
        assert_eq!(p.dir.binds[0].source, dir.path().join("data"));
        assert!(!p.dir.binds[1].readonly && !p.dir.binds[1].recursive);

        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.2.0",
            "mounts": [{"destination": "/a", "type": "bind", "source": "/nonexistent-moat-src"}]
        }))
        .unwrap();
        let e = plan(&spec, dir.path(), "c1").unwrap_err().to_string();
        assert!(e.contains("/nonexistent-moat-src"), "{e}");
    }
}
