//! Bind mounts served from the host: the host shares one directory per VM over virtiofs (tag
//! [`SHARE_TAG`]; FUSE over a serial port in a VM resumed from a template), holding the source of every bind mount of its containers. The agent mounts it
//! once and points each listed bind mount of a container's config at its place in the share.
//!
//! What it must never do: let a config bind-mount a guest path the host did not share (a bind
//! mount not listed by the host is refused), or resolve a share path outside the share.

use std::path::{Component, Path};

use moat_agent_proto::{InlineFile, SharedMount, SharedRootfs, INLINE_FILE_MAX, SHARE_TAG};
use nix::mount::{mount, MsFlags};
use serde_json::Value;

use crate::error::{AgentFailure, Result};

/// Where the agent mounts the shared directory.
pub const SHARE_MOUNT: &str = "/run/moat-agent/shared";

/// Mount the host's shared directory at [`SHARE_MOUNT`].
/// A VM resumed from a template has no virtiofs device: its share is FUSE over a serial port
/// ([`crate::fuse_relay`]).
pub fn mount_share() -> Result<()> {
    std::fs::create_dir_all(SHARE_MOUNT).map_err(|e| AgentFailure::io("create", SHARE_MOUNT, e))?;
    if let Some(port) = crate::fuse_relay::port() {
        return crate::fuse_relay::mount_share(&port, SHARE_MOUNT);
    }
    mount(
        Some(SHARE_TAG),
        SHARE_MOUNT,
        Some("virtiofs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|errno| AgentFailure::Sys {
        what: format!("mount virtiofs {SHARE_TAG} at {SHARE_MOUNT}"),
        errno,
    })
}

/// The place in the mounted share of the relative path `rel` (normal components only).
pub fn source(rel: &str) -> Result<std::path::PathBuf> {
    let p = Path::new(rel);
    if p.components().count() == 0 || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(AgentFailure::Invalid(format!("shared path {rel:?}")));
    }
    Ok(Path::new(SHARE_MOUNT).join(p))
}

/// Bind the container root filesystem the host placed in the share at `rootfs` (with the mounts
/// below it), read-only when the host shares it so.
pub fn bind_rootfs(r: &SharedRootfs, rootfs: &Path) -> Result<()> {
    let src = source(&r.path)?;
    let fail = |what: &str, e: nix::errno::Errno| {
        AgentFailure::Rootfs(format!(
            "{what} {} at {}: {e}",
            src.display(),
            rootfs.display()
        ))
    };
    mount(
        Some(&src),
        rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| fail("bind", e))?;
    // The share is nosuid (a bind mount source stays so), but a container's own root must honour
    // its set-user-ID programs as on a host (CRI's `noNewPrivileges: false`); a container that
    // asks for no_new_privs still gets it from `moat-container`. A bind remount sets exactly the
    // flags it is given: nodev stays.
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NODEV;
    if r.readonly {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(None::<&str>, rootfs, None::<&str>, flags, None::<&str>)
        .map_err(|e| fail("remount (suid, nodev)", e))?;
    Ok(())
}

fn is_bind(m: &Value) -> bool {
    m.get("type").and_then(Value::as_str) == Some("bind")
        || m.get("options")
            .and_then(Value::as_array)
            .is_some_and(|o| o.iter().any(|x| x == "bind" || x == "rbind"))
}

/// Write the files the host sent inline into `dir` (`<dir>/<mount index>`).
pub fn write_files(dir: &Path, files: &[InlineFile]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if files.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| AgentFailure::io("create", dir, e))?;
    for f in files {
        if f.content.len() as u64 > INLINE_FILE_MAX {
            return Err(AgentFailure::Invalid(format!(
                "inline file for mount {}: {} bytes (at most {INLINE_FILE_MAX})",
                f.index,
                f.content.len()
            )));
        }
        let p = dir.join(f.index.to_string());
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(f.mode & 0o7777)
            .open(&p)
            .and_then(|mut w| std::io::Write::write_all(&mut w, &f.content))
            .map_err(|e| AgentFailure::io("write", &p, e))?;
    }
    Ok(())
}

/// Point the config's listed bind mounts at the share, and those of `files` at their copies in
/// `files_dir`; refuse any other bind mount.
pub fn rewrite(
    config: &mut Value,
    shared: &[SharedMount],
    files_dir: &Path,
    files: &[InlineFile],
) -> Result<()> {
    let empty = Vec::new();
    let mut mounts = match config.get_mut("mounts") {
        Some(Value::Array(m)) => std::mem::take(m),
        Some(Value::Null) | None => empty,
        Some(_) => {
            return Err(AgentFailure::Invalid(
                "config.json: mounts is not an array".into(),
            ))
        }
    };
    let mut listed = vec![false; mounts.len()];
    let mut sources: Vec<(u32, std::path::PathBuf, bool)> = Vec::new();
    for s in shared {
        let rel = Path::new(&s.path);
        if rel.components().count() == 0
            || !rel.components().all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(AgentFailure::Invalid(format!(
                "shared mount path {:?}",
                s.path
            )));
        }
        sources.push((s.index, Path::new(SHARE_MOUNT).join(rel), s.readonly));
    }
    for f in files {
        sources.push((f.index, files_dir.join(f.index.to_string()), f.readonly));
    }
    for (index, src, readonly) in sources {
        let i = index as usize;
        let m = mounts
            .get_mut(i)
            .and_then(Value::as_object_mut)
            .ok_or_else(|| AgentFailure::Invalid(format!("shared mount index {i}")))?;
        m.insert("source".into(), src.to_string_lossy().into_owned().into());
        if readonly {
            let opts = m.entry("options").or_insert_with(|| Value::Array(vec![]));
            if let Some(o) = opts.as_array_mut() {
                o.retain(|x| x != "rw");
                if !o.iter().any(|x| x == "ro") {
                    o.push("ro".into());
                }
            }
        }
        listed[i] = true;
    }
    for (m, ok) in mounts.iter().zip(&listed) {
        if is_bind(m) && !ok {
            let src = m.get("source").and_then(Value::as_str).unwrap_or("?");
            return Err(AgentFailure::Invalid(format!(
                "bind mount of {src}: the host did not share it with the VM"
            )));
        }
    }
    if let Some(obj) = config.as_object_mut() {
        obj.insert("mounts".into(), Value::Array(mounts));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn listed_binds_point_into_the_share_and_others_are_refused() {
        let mut c = json!({"mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/data", "type": "bind", "source": "/host/data", "options": ["rbind", "rw"]},
        ]});
        let shared = [SharedMount {
            index: 1,
            path: "c1/1".into(),
            readonly: true,
        }];
        rewrite(&mut c, &shared, Path::new("/f"), &[]).unwrap();
        assert_eq!(c["mounts"][1]["source"], "/run/moat-agent/shared/c1/1");
        assert_eq!(c["mounts"][1]["options"], json!(["rbind", "ro"]));
        let mut c2 =
            json!({"mounts": [{"destination": "/x", "source": "/etc", "options": ["bind"]}]});
        assert!(rewrite(&mut c2, &[], Path::new("/f"), &[]).is_err());
        let bad = [SharedMount {
            index: 0,
            path: "../../etc".into(),
            readonly: false,
        }];
        assert!(rewrite(&mut c2, &bad, Path::new("/f"), &[]).is_err());
        let out_of_range = [SharedMount {
            index: 9,
            path: "a".into(),
            readonly: false,
        }];
        assert!(rewrite(
            &mut json!({"mounts": []}),
            &out_of_range,
            Path::new("/f"),
            &[]
        )
        .is_err());
    }
}
