//! Path resolution inside a root that never follows a symlink out of it: `openat2(2)` with
//! `RESOLVE_IN_ROOT` (symlinks and `..` are resolved as if the root were `/`) and
//! `RESOLVE_NO_MAGICLINKS` (no `/proc/self/fd/N` jumps). Everything that comes from a bundle or an
//! image goes through here before it is opened, created or mounted on.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::sys::stat::Mode;

use crate::Result;

/// `openat2(dirfd, path, flags, mode, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`.
pub fn open_in_root(root: BorrowedFd<'_>, path: &Path, flags: i32, mode: u32) -> Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| Errno::EINVAL)?;
    let mut how: libc::open_how = {
        // SAFETY: open_how is a plain C struct of integers; all-zero is a valid value.
        unsafe { std::mem::zeroed() }
    };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
        mode as u64
    } else {
        0
    };
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    loop {
        // SAFETY: `c` and `how` are valid for the duration of the call; the size matches.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            // SAFETY: the kernel returned a new descriptor that nobody else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        }
        match Errno::last() {
            Errno::EAGAIN | Errno::EINTR => continue, // a rename raced with resolution: retry
            e => return Err(e),
        }
    }
}

/// What `mkdir_all_in_root` should leave at the last component when it is missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leaf {
    Dir,
    File,
}

/// Create `path` (and its missing parents, mode 0755) inside `root`, never leaving it, and return an
/// `O_PATH` descriptor on the result. Symlinks met on the way are followed as if `root` were `/`
/// (an absolute target restarts at the root, `..` stops at the root), so a symlink planted in the
/// rootfs can redirect creation only to somewhere else inside the root. Every open goes through
/// `RESOLVE_IN_ROOT`, so a component swapped for a symlink during the walk cannot escape either.
pub fn mkdir_all_in_root(
    root: BorrowedFd<'_>,
    path: &Path,
    leaf: Leaf,
    mode: u32,
) -> Result<OwnedFd> {
    use std::collections::VecDeque;
    use std::ffi::OsString;
    fn comps(p: &Path) -> Vec<OsString> {
        p.components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_owned()),
                Component::ParentDir => Some(OsString::from("..")),
                _ => None,
            })
            .collect()
    }
    let mut pending: VecDeque<OsString> = comps(path).into();
    let mut cur = std::path::PathBuf::from("/");
    let mut links = 0;
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            cur.pop();
            continue;
        }
        let last = pending.is_empty();
        let parent = open_in_root(root, &cur, libc::O_PATH | libc::O_DIRECTORY, 0)?;
        match nix::sys::stat::fstatat(
            Some(parent.as_raw_fd()),
            name.as_os_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => {
                links += 1;
                if links > 40 {
                    return Err(Errno::ELOOP);
                }
                let target = nix::fcntl::readlinkat(Some(parent.as_raw_fd()), name.as_os_str())?;
                let target = Path::new(&target);
                if target.is_absolute() {
                    cur = std::path::PathBuf::from("/");
                }
                for c in comps(target).into_iter().rev() {
                    pending.push_front(c);
                }
            }
            Ok(_) => cur.push(&name),
            Err(Errno::ENOENT) => {
                let r = if last && leaf == Leaf::File {
                    nix::fcntl::openat(
                        Some(parent.as_raw_fd()),
                        name.as_os_str(),
                        nix::fcntl::OFlag::O_CREAT
                            | nix::fcntl::OFlag::O_EXCL
                            | nix::fcntl::OFlag::O_NOFOLLOW
                            | nix::fcntl::OFlag::O_CLOEXEC
                            | nix::fcntl::OFlag::O_WRONLY,
                        Mode::from_bits_truncate(mode),
                    )
                    .map(|fd| drop(crate::fd::owned(fd)))
                } else {
                    let m = if last { mode } else { 0o755 };
                    nix::sys::stat::mkdirat(
                        Some(parent.as_raw_fd()),
                        name.as_os_str(),
                        Mode::from_bits_truncate(m),
                    )
                };
                match r {
                    Ok(()) => cur.push(&name),
                    // Created by someone else meanwhile: look at it again.
                    Err(Errno::EEXIST) => pending.push_front(name),
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    }
    open_in_root(root, &cur, libc::O_PATH, 0)
}

/// The `/proc/self/fd/N` path of a descriptor, for the calls (mount(2), chdir through procfs) that
/// take a path: the kernel resolves it to exactly the object the descriptor holds.
pub fn proc_fd_path(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}
