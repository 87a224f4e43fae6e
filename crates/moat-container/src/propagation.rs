//! Mount propagation of the container's root, runc's rules: in the container's new mount namespace
//! `/` first gets `linux.rootfsPropagation` (recursive slave when unset), so a `shared`/`rshared`
//! container keeps its mounts in the host's peer groups and a mount made in a bidirectional volume
//! reaches the host; then the mount holding `root.path` is made private (only if it is shared), so
//! the rootfs' self bind and `pivot_root` never propagate to the host — `pivot_root(2)` also refuses
//! a shared new root or parent. After the root switch `rootfs::finish` applies the propagation to
//! the new `/` again.
//!
//! What it must never do: change the propagation of a mount outside the container's own mount
//! namespace (every call here runs after `unshare(CLONE_NEWNS)`).

use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use oci_spec::runtime::Spec;

use crate::error::{InitFailure, Step};

type R<T> = std::result::Result<T, InitFailure>;

/// The propagation `/` gets before the rootfs is bound: `linux.rootfsPropagation`, else `rslave`.
pub fn root_propagation(spec: &Spec) -> MsFlags {
    spec.linux()
        .as_ref()
        .and_then(|l| l.rootfs_propagation().as_deref())
        .and_then(crate::mountopts::propagation)
        .unwrap_or(MsFlags::MS_SLAVE | MsFlags::MS_REC)
}

/// Apply [`root_propagation`] to `/` and make the mount holding `rootfs` private if it is shared
/// (runc's `prepareRoot` and `rootfsParentMountPrivate`).
pub fn prepare_root(spec: &Spec, rootfs: &Path) -> R<()> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        root_propagation(spec),
        None::<&str>,
    )
    .map_err(|e| InitFailure::new(Step::Mount, "set propagation of /", e))?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| {
        InitFailure::msg(
            Step::Mount,
            format!(
                "read /proc/self/mountinfo to find the mount of {}: {e}",
                rootfs.display()
            ),
        )
    })?;
    let real = std::fs::canonicalize(rootfs).unwrap_or_else(|_| rootfs.to_owned());
    if let Some(parent) = shared_parent(&info, &real) {
        mount(
            None::<&str>,
            &parent,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(|e| {
            InitFailure::new(
                Step::Mount,
                format!(
                    "make {} (the mount of the rootfs) private",
                    parent.display()
                ),
                e,
            )
        })?;
    }
    Ok(())
}

/// The mount point holding `path` (the longest mount point that is `path` or an ancestor of it;
/// the last one listed when several are stacked), if that mount is shared.
fn shared_parent(mountinfo: &str, path: &Path) -> Option<PathBuf> {
    let mut best: Option<(PathBuf, bool)> = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(point) = fields.get(4).map(|p| unescape(p)) else {
            continue;
        };
        if !path.starts_with(&point) {
            continue;
        }
        let shared = fields
            .iter()
            .skip(6)
            .take_while(|f| **f != "-")
            .any(|f| f.starts_with("shared:"));
        let longer = best
            .as_ref()
            .map(|(b, _)| point.as_os_str().len() >= b.as_os_str().len())
            .unwrap_or(true);
        if longer {
            best = Some((point, shared));
        }
    }
    best.and_then(|(p, shared)| shared.then_some(p))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` (octal).
fn unescape(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let oct = std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("x");
            if let Ok(v) = u8::from_str_radix(oct, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:40 / /run rw shared:5 - tmpfs tmpfs rw
31 30 0:41 / /run/ctr/rootfs rw shared:9 - overlay overlay rw
32 30 0:42 / /run/priv/rootfs rw - overlay overlay rw
33 22 0:43 / /mnt/a\\040b rw shared:12 master:3 - tmpfs tmpfs rw
";

    #[test]
    fn the_mount_holding_the_rootfs_when_shared() {
        assert_eq!(
            shared_parent(INFO, Path::new("/run/ctr/rootfs")),
            Some(PathBuf::from("/run/ctr/rootfs"))
        );
        assert_eq!(
            shared_parent(INFO, Path::new("/run/other/rootfs")),
            Some(PathBuf::from("/run"))
        );
        assert_eq!(shared_parent(INFO, Path::new("/run/priv/rootfs")), None);
        assert_eq!(
            shared_parent(INFO, Path::new("/mnt/a b/rootfs")),
            Some(PathBuf::from("/mnt/a b"))
        );
        // A prefix of the name is not a parent.
        assert_eq!(
            shared_parent(INFO, Path::new("/run/ctr/rootfs2")),
            Some(PathBuf::from("/run"))
        );
    }

    #[test]
    fn root_gets_the_asked_propagation_else_rslave() {
        let with = |p: Option<&str>| {
            let mut linux = oci_spec::runtime::Linux::default();
            linux.set_rootfs_propagation(p.map(str::to_owned));
            let mut spec = Spec::default();
            spec.set_linux(Some(linux));
            root_propagation(&spec)
        };
        assert_eq!(with(None), MsFlags::MS_SLAVE | MsFlags::MS_REC);
        assert_eq!(with(Some("rshared")), MsFlags::MS_SHARED | MsFlags::MS_REC);
        assert_eq!(with(Some("shared")), MsFlags::MS_SHARED);
        assert_eq!(
            with(Some("rprivate")),
            MsFlags::MS_PRIVATE | MsFlags::MS_REC
        );
        assert_eq!(with(Some("slave")), MsFlags::MS_SLAVE);
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape(r"/a\040b\134c"), PathBuf::from("/a b\\c"));
        assert_eq!(unescape(r"/x\04"), PathBuf::from(r"/x\04"));
    }
}
