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
/// `O_PATH` descriptor on the result. The parents are resolved with `RESOLVE_IN_ROOT`, so a symlink
/// planted in the rootfs can redirect creation only to somewhere else inside the root.
pub fn mkdir_all_in_root(
    root: BorrowedFd<'_>,
    path: &Path,
    leaf: Leaf,
    mode: u32,
) -> Result<OwnedFd> {
    match open_in_root(root, path, libc::O_PATH, 0) {
        Ok(fd) => return Ok(fd),
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(e),
    }
    let comps: Vec<_> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            _ => None,
        })
        .collect();
    if comps.is_empty() {
        return open_in_root(root, Path::new("/"), libc::O_PATH, 0);
    }
    // Walk down: each step opens the parent inside the root, then creates one component in it.
    let mut cur = open_in_root(root, Path::new("/"), libc::O_PATH | libc::O_DIRECTORY, 0)?;
    let mut sofar = std::path::PathBuf::from("/");
    for (i, name) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        sofar.push(name);
        match open_in_root(root, &sofar, libc::O_PATH, 0) {
            Ok(fd) => {
                cur = fd;
                continue;
            }
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(e),
        }
        // The component is missing: `cur` is its parent as resolved inside the root.
        if last && leaf == Leaf::File {
            let fd = nix::fcntl::openat(
                Some(cur.as_raw_fd()),
                name.as_os_str(),
                nix::fcntl::OFlag::O_CREAT
                    | nix::fcntl::OFlag::O_NOFOLLOW
                    | nix::fcntl::OFlag::O_CLOEXEC
                    | nix::fcntl::OFlag::O_WRONLY,
                Mode::from_bits_truncate(mode),
            );
            match fd {
                Ok(fd) => drop(crate::fd::owned(fd)),
                Err(Errno::EEXIST) => {}
                Err(e) => return Err(e),
            }
        } else {
            match nix::sys::stat::mkdirat(
                Some(cur.as_raw_fd()),
                name.as_os_str(),
                Mode::from_bits_truncate(if last { mode } else { 0o755 }),
            ) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e),
            }
        }
        cur = open_in_root(root, &sofar, libc::O_PATH, 0)?;
    }
    Ok(cur)
}

/// The `/proc/self/fd/N` path of a descriptor, for the calls (mount(2), chdir through procfs) that
/// take a path: the kernel resolves it to exactly the object the descriptor holds.
pub fn proc_fd_path(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}
