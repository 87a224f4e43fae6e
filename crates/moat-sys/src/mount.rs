//! Mount helpers that act on descriptors rather than paths, so that what is mounted on is exactly
//! what was resolved inside the root (the CVE-2021-30465 class of races).

use std::os::fd::BorrowedFd;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

use crate::resolve::proc_fd_path;
use crate::Result;

/// `mount(source, <fd>, fstype, flags, data)` with the target given as an `O_PATH` descriptor.
pub fn mount_on_fd(
    source: Option<&str>,
    target: BorrowedFd<'_>,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    mount(source, proc_fd_path(target).as_str(), fstype, flags, data)
}

/// `open_tree(2)` with `OPEN_TREE_CLONE`: a detached copy of the mount at `path` (with the mounts
/// below it when `recursive`), attachable elsewhere with [`move_mount_to`], also in another mount
/// namespace.
pub fn open_tree_clone(path: &std::path::Path, recursive: bool) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::{FromRawFd, OwnedFd, RawFd};
    use std::os::unix::ffi::OsStrExt;
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    let mut flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: `c` is a NUL-terminated string valid for the call; the other arguments are integers.
    let r = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) };
    if r < 0 {
        return Err(Errno::last());
    }
    // SAFETY: open_tree returned a new descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// `move_mount(2)`: attach the detached tree `tree` (from [`open_tree_clone`]) at `target`, a path
/// in the calling thread's mount namespace.
pub fn move_mount_to(tree: BorrowedFd<'_>, target: &std::path::Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    let c = std::ffi::CString::new(target.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: `c` and the empty string are NUL-terminated strings valid for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// `struct mount_attr` of `mount_setattr(2)` (the first version: no idmap user namespace here).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct MountAttr {
    pub attr_set: u64,
    pub attr_clr: u64,
    pub propagation: u64,
    pub userns_fd: u64,
}

/// `MOUNT_ATTR_*` of `linux/mount.h`.
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;
/// The atime mode is an enum inside this mask, not a set of bits: changing it needs the whole
/// mask in `attr_clr`.
pub const MOUNT_ATTR__ATIME: u64 = 0x70;
pub const MOUNT_ATTR_RELATIME: u64 = 0x0;
pub const MOUNT_ATTR_NOATIME: u64 = 0x10;
pub const MOUNT_ATTR_STRICTATIME: u64 = 0x20;
pub const MOUNT_ATTR_NODIRATIME: u64 = 0x80;
pub const MOUNT_ATTR_NOSYMFOLLOW: u64 = 0x0020_0000;

/// `mount_setattr(tree, "", AT_EMPTY_PATH [| AT_RECURSIVE], attr)`: change the attributes of the
/// mount `tree` refers to (a detached tree or an `O_PATH` descriptor of an attached mount), and of
/// every mount below it when `recursive`.
pub fn mount_setattr(tree: BorrowedFd<'_>, recursive: bool, attr: &MountAttr) -> Result<()> {
    use std::os::fd::AsRawFd;
    let mut flags = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: `attr` is a valid `struct mount_attr` of the size passed, and the path is an empty
    // NUL-terminated string; both outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            flags,
            attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// [`mount_setattr`] with `MOUNT_ATTR_RDONLY` on the detached or attached tree `tree` (every
/// mount below it too when `recursive`).
pub fn set_tree_readonly(tree: BorrowedFd<'_>, recursive: bool) -> Result<()> {
    set_tree_attrs(tree, recursive, MOUNT_ATTR_RDONLY, 0)
}

/// [`mount_setattr`] setting the `MOUNT_ATTR_*` bits `attrs` on the detached or attached tree
/// `tree` (every mount below it too when `recursive`), other attributes kept, and its
/// propagation to `propagation` (`MS_PRIVATE`, `MS_SLAVE`, ...; 0 keeps it).
pub fn set_tree_attrs(
    tree: BorrowedFd<'_>,
    recursive: bool,
    attrs: u64,
    propagation: u64,
) -> Result<()> {
    let attr = MountAttr {
        attr_set: attrs,
        propagation,
        ..MountAttr::default()
    };
    mount_setattr(tree, recursive, &attr)
}
