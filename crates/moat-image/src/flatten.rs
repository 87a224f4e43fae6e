//! The copy fallback of a container rootfs where the kernel refuses an overlay in a user
//! namespace (before Linux 5.11): each snapshot, bottom first, is applied onto a plain directory
//! the way overlayfs would show it: a 0/0 character device removes what it names, a directory
//! marked opaque replaces the one below, everything else is copied with its owner, mode and
//! times (hard links become copies).
//!
//! The snapshots are moat's own unpacked layers (already checked when unpacked), walked without
//! following any symlink; what it must never do is follow a link of a layer while writing: it
//! descends only into directories it has just created or found to be real directories with
//! `lstat` (a symlink of a lower layer where an upper one has a directory is replaced, as
//! overlayfs shows it), and nothing else writes in the tree before the container starts.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use crate::error::{ImageError, Result};
use crate::snapshot::opaque_xattr;

/// Apply the snapshot directory `layer` onto `dest`.
pub fn apply_layer(layer: &Path, dest: &Path) -> Result<()> {
    for e in fs::read_dir(layer).map_err(ImageError::io("read directory", layer))? {
        let e = e.map_err(ImageError::io("read directory", layer))?;
        let (src, dst) = (e.path(), dest.join(e.file_name()));
        let md = fs::symlink_metadata(&src).map_err(ImageError::io("stat", &src))?;
        let ft = md.file_type();
        if ft.is_char_device() && md.rdev() == 0 {
            remove(&dst)?;
            continue;
        }
        if ft.is_dir() {
            let opaque = rustix::fs::lgetxattr(&src, opaque_xattr(true), &mut [0u8; 4]).is_ok()
                || rustix::fs::lgetxattr(&src, opaque_xattr(false), &mut [0u8; 4]).is_ok();
            let is_dir = fs::symlink_metadata(&dst).is_ok_and(|m| m.is_dir());
            if opaque || !is_dir {
                remove(&dst)?;
                fs::create_dir(&dst).map_err(ImageError::io("mkdir", &dst))?;
            }
            apply_layer(&src, &dst)?;
        } else {
            remove(&dst)?;
            if ft.is_symlink() {
                let target = fs::read_link(&src).map_err(ImageError::io("read link", &src))?;
                std::os::unix::fs::symlink(&target, &dst)
                    .map_err(ImageError::io("symlink", &dst))?;
            } else if ft.is_file() {
                fs::copy(&src, &dst).map_err(ImageError::io("copy to", &dst))?;
            } else {
                continue; // fifos and sockets of a layer are not worth a copy
            }
        }
        std::os::unix::fs::lchown(&dst, Some(md.uid()), Some(md.gid()))
            .map_err(ImageError::io("chown", &dst))?;
        if !ft.is_symlink() {
            fs::set_permissions(&dst, fs::Permissions::from_mode(md.mode() & 0o7777))
                .map_err(ImageError::io("chmod", &dst))?;
        }
        let ts = |sec, nsec| rustix::fs::Timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        };
        let times = rustix::fs::Timestamps {
            last_access: ts(md.atime(), md.atime_nsec()),
            last_modification: ts(md.mtime(), md.mtime_nsec()),
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            &dst,
            &times,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| ImageError::io("set the times of", &dst)(e.into()))?;
    }
    Ok(())
}

/// Remove `p` whatever it is (nothing there is fine); never follows a symlink.
fn remove(p: &Path) -> Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p).map_err(ImageError::io("remove", p)),
        Ok(_) => fs::remove_file(p).map_err(ImageError::io("remove", p)),
        Err(_) => Ok(()),
    }
}
