//! File-descriptor plumbing: passing descriptors over unix sockets (`SCM_RIGHTS`), and the sealed
//! in-memory copy of the runtime binary that protects it against CVE-2019-5736.
//!
//! The CVE: a process inside the container opens `/proc/<runtime pid>/exe` while the runtime is
//! inside the container's namespaces and later writes through it, replacing the host's runtime
//! binary. The defence (the one runc and crun use): before entering a container, re-execute the
//! runtime from a file that cannot be written: the binary seen through a private read-only
//! overlayfs (no copy), or else a sealed memfd copy, so `/proc/self/exe` is never a writable path
//! to the host's binary.

use std::ffi::{CStr, CString};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag, SealFlag};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use nix::sys::stat::Mode;

use crate::Result;

/// Send `fds` with a one-byte payload over the unix socket `sock`.
pub fn send_fds(sock: BorrowedFd<'_>, payload: &[u8], fds: &[RawFd]) -> Result<()> {
    let iov = [IoSlice::new(payload)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)?;
    Ok(())
}

/// Receive one message with descriptors from `sock`; returns the payload length and the fds.
pub fn recv_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> Result<(usize, Vec<OwnedFd>)> {
    let mut cmsg_space = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg_space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for fd in raw {
                // SAFETY: SCM_RIGHTS installed these new descriptors in our table; we own them.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Ok((msg.bytes, fds))
}

const SEALS: SealFlag = SealFlag::from_bits_truncate(
    SealFlag::F_SEAL_SEAL.bits()
        | SealFlag::F_SEAL_SHRINK.bits()
        | SealFlag::F_SEAL_GROW.bits()
        | SealFlag::F_SEAL_WRITE.bits(),
);

/// Set by [`reexec_from_sealed_copy`] in the environment of the re-executed image when it runs
/// from a read-only overlay (see there); consumed (removed) by [`running_from_sealed_copy`].
const SEALED_ENV: &str = "_MOAT_SEALED_EXE";

/// True when the running executable cannot be written through `/proc/self/exe`: a write-sealed
/// memfd, or a file on a private read-only overlayfs that [`reexec_from_sealed_copy`] set up (it
/// marks the new image with an environment variable; the overlay is checked, not trusted).
///
/// Call it once, first thing in `main`, while the process is single-threaded: it removes the
/// marker from the environment so that no child inherits it.
pub fn running_from_sealed_copy() -> bool {
    let marked = std::env::var_os(SEALED_ENV).is_some();
    if marked {
        std::env::remove_var(SEALED_ENV);
    }
    let Ok(fd) = nix::fcntl::open(
        "/proc/self/exe",
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) else {
        return false;
    };
    // SAFETY: `open` returned a new descriptor that nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if marked && on_lower_only_overlay(fd.as_fd()) {
        return true;
    }
    match fcntl(fd.as_raw_fd(), FcntlArg::F_GET_SEALS) {
        Ok(bits) => SealFlag::from_bits_truncate(bits).contains(SEALS),
        Err(_) => false,
    }
}

/// The environment variable to give a child that executes `/proc/self/exe` so that it knows it
/// runs from the same sealed binary (and does not re-execute itself from a copy), when this
/// process runs from a read-only overlay set up by [`reexec_from_sealed_copy`]: `None` otherwise
/// (a sealed memfd is recognised without it). The child checks the overlay, as ever.
pub fn sealed_exe_marker() -> Option<(&'static str, &'static str)> {
    let fd = nix::fcntl::open(
        "/proc/self/exe",
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    // SAFETY: `open` returned a new descriptor that nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    on_lower_only_overlay(fd.as_fd()).then_some((SEALED_ENV, "1"))
}

/// The file is on a read-only overlayfs: one set up by [`sealed_overlay_of_self`] has no upper
/// layer, so its superblock can never become writable.
fn on_lower_only_overlay(fd: BorrowedFd<'_>) -> bool {
    match nix::sys::statfs::fstatfs(fd) {
        Ok(st) => {
            st.filesystem_type() == nix::sys::statfs::OVERLAYFS_SUPER_MAGIC
                && st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY)
        }
        Err(_) => false,
    }
}

/// Re-execute the current program from a copy of itself that cannot be written through
/// `/proc/self/exe`, with the same arguments and environment. Returns only on failure.
///
/// First choice (runc 1.2's design): the binary seen through a new, never-attached overlayfs whose
/// only layers are the binary's directory and an unrelated directory (`/dev`). An overlay without
/// an upper layer is read-only for good (no remount can change that, and a detached mount cannot
/// be remounted anyway), and it shares the page cache of the binary: nothing is copied and no
/// mount event is seen by anyone. Fallback (no overlayfs, or the binary's directory cannot be a
/// layer): a write-sealed memfd copy of the binary, which costs a copy of the whole file.
pub fn reexec_from_sealed_copy() -> Errno {
    let (exe, marker) = match sealed_overlay_of_self() {
        Ok(fd) => (fd, true),
        Err(_) => match sealed_copy_of_self() {
            Ok(fd) => (fd, false),
            Err(e) => return e,
        },
    };
    let args: Vec<CString> = std::env::args_os()
        .filter_map(|a| CString::new(std::os::unix::ffi::OsStrExt::as_bytes(a.as_os_str())).ok())
        .collect();
    let mut env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k != SEALED_ENV)
        .filter_map(|(k, v)| {
            let mut kv = k.into_encoded_bytes();
            kv.push(b'=');
            kv.extend(v.into_encoded_bytes());
            CString::new(kv).ok()
        })
        .collect();
    if marker {
        env.push(CString::new(format!("{SEALED_ENV}=1")).expect("no NUL in the marker"));
    }
    match nix::unistd::fexecve(exe.as_raw_fd(), &args, &env) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

// The new mount API (linux/mount.h), spelled out so as not to depend on a libc version.
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOUNT_ATTR_RDONLY: libc::c_uint = 0x1;
const MOUNT_ATTR_NOSUID: libc::c_uint = 0x2;
const MOUNT_ATTR_NODEV: libc::c_uint = 0x4;

/// The directories tried, in order, as the second lower layer of [`sealed_overlay_of_self`]:
/// any directory will do that does not overlap the binary's and has no mount below it that the
/// caller cannot see through. `/dev` first (what root always gets); in a user namespace's own
/// mount namespace the submounts of `/dev` are locked ("overlayfs: failed to clone lowerpath"),
/// so directories that rarely hold mounts follow.
const SECOND_LOWER: &[&[u8]] = &[b"/dev", b"/usr/share", b"/etc", b"/var/lib"];

/// A read-only descriptor of our own binary, seen through a fresh overlayfs whose lower layers are
/// the binary's directory (on top) and another directory ([`SECOND_LOWER`]: overlayfs needs two
/// lower layers to run without an upper one). The mount is never attached anywhere; it lives as
/// long as a descriptor (or, after `execveat`, the process's executable) refers to it.
fn sealed_overlay_of_self() -> Result<OwnedFd> {
    let exe = std::fs::read_link("/proc/self/exe").map_err(|_| Errno::ENOENT)?;
    let (Some(dir), Some(name)) = (exe.parent(), exe.file_name()) else {
        return Err(Errno::EINVAL);
    };
    let dir = dir.as_os_str().as_encoded_bytes();
    // ':' ',' '\\' are separators in the option. A deleted binary (" (deleted)") is not found
    // through the overlay.
    if dir.iter().any(|c| matches!(c, b':' | b',' | b'\\')) {
        return Err(Errno::EINVAL);
    }
    let name = CString::new(name.as_encoded_bytes()).map_err(|_| Errno::EINVAL)?;
    let under = |a: &[u8], b: &[u8]| a == b || (a.starts_with(b) && a.get(b.len()) == Some(&b'/'));
    let mut last = Errno::EINVAL;
    for second in SECOND_LOWER {
        // The layers must not overlap.
        if under(dir, second) || under(second, dir) || dir == b"/" {
            continue;
        }
        let mut lower = dir.to_vec();
        lower.push(b':');
        lower.extend_from_slice(second);
        let lower = CString::new(lower).map_err(|_| Errno::EINVAL)?;
        match overlay_view(&lower, &name) {
            Ok(fd) => return Ok(fd),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// `name` in a never-attached read-only overlay of the layers `lower` (no upper layer).
fn overlay_view(lower: &CStr, name: &CStr) -> Result<OwnedFd> {
    let ctx = fsopen(c"overlay")?;
    fsconfig(
        ctx.as_fd(),
        FSCONFIG_SET_STRING,
        Some(c"lowerdir"),
        Some(lower),
    )?;
    fsconfig(ctx.as_fd(), FSCONFIG_CMD_CREATE, None, None)?;
    let mnt = fsmount(
        ctx.as_fd(),
        MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
    )?;
    let fd = nix::fcntl::openat(
        Some(mnt.as_raw_fd()),
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // SAFETY: `openat` returned a new descriptor that nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if !on_lower_only_overlay(fd.as_fd()) {
        return Err(Errno::EROFS);
    }
    Ok(fd)
}

fn fsopen(fstype: &CStr) -> Result<OwnedFd> {
    // SAFETY: `fstype` is a NUL-terminated string valid for the call.
    let r = unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) };
    if r < 0 {
        return Err(Errno::last());
    }
    // SAFETY: fsopen returned a new descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

fn fsconfig(
    ctx: BorrowedFd<'_>,
    cmd: libc::c_uint,
    key: Option<&CStr>,
    value: Option<&CStr>,
) -> Result<()> {
    let key = key.map_or(std::ptr::null(), CStr::as_ptr);
    let value = value.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: `key` and `value` are NULL or NUL-terminated strings valid for the call.
    let r = unsafe { libc::syscall(libc::SYS_fsconfig, ctx.as_raw_fd(), cmd, key, value, 0) };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

fn fsmount(ctx: BorrowedFd<'_>, attrs: libc::c_uint) -> Result<OwnedFd> {
    // SAFETY: plain integer arguments.
    let r = unsafe { libc::syscall(libc::SYS_fsmount, ctx.as_raw_fd(), FSMOUNT_CLOEXEC, attrs) };
    if r < 0 {
        return Err(Errno::last());
    }
    // SAFETY: fsmount returned a new descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

fn sealed_copy_of_self() -> Result<OwnedFd> {
    let name: &CStr = c"moat-runtime";
    let memfd = memfd_create(
        name,
        MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
    )?;
    let exe = nix::fcntl::open(
        "/proc/self/exe",
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // SAFETY: `open` returned a new descriptor that nobody else owns.
    let exe = unsafe { OwnedFd::from_raw_fd(exe) };
    let size = nix::sys::stat::fstat(exe.as_raw_fd())?.st_size as usize;
    let mut done = 0usize;
    while done < size {
        let n = nix::sys::sendfile::sendfile(memfd.as_fd(), exe.as_fd(), None, size - done)?;
        if n == 0 {
            return Err(Errno::EIO);
        }
        done += n;
    }
    // F_SEAL_WRITE fails with EBUSY while anything holds an extra reference to a page of the
    // file (seen once in ~1000 creates on a loaded host, e.g. a page being migrated): retry.
    let mut tries = 0;
    loop {
        match fcntl(memfd.as_raw_fd(), FcntlArg::F_ADD_SEALS(SEALS)) {
            Ok(_) => return Ok(memfd),
            Err(Errno::EBUSY) if tries < 50 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Set or clear close-on-exec on `fd`.
pub fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> Result<()> {
    let flags = if on {
        nix::fcntl::FdFlag::FD_CLOEXEC
    } else {
        nix::fcntl::FdFlag::empty()
    };
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(flags)).map(|_| ())
}

/// Take ownership of a raw descriptor number that the caller knows to be open and unowned
/// (for example stdio or `--preserve-fds` descriptors inherited from our parent). Returns EBADF
/// when the number is not an open descriptor.
pub fn own_inherited(fd: RawFd) -> Result<OwnedFd> {
    fcntl(fd, FcntlArg::F_GETFD)?;
    // SAFETY: F_GETFD just proved `fd` is open; the caller guarantees nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Wrap a descriptor returned by a `nix` call that still returns `RawFd`.
pub fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: callers pass only descriptors that a system call just created for them.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// `ioctl(TIOCSWINSZ)`.
pub fn set_winsize(fd: BorrowedFd<'_>, ws: &nix::pty::Winsize) -> Result<()> {
    // SAFETY: `ws` is a valid winsize for the duration of the call.
    let r = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TIOCSWINSZ,
            ws as *const nix::pty::Winsize,
        )
    };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// `ioctl(TIOCSCTTY)`: make `fd` the controlling terminal of this session.
pub fn set_controlling_tty(fd: BorrowedFd<'_>) -> Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// `ioctl(TIOCGWINSZ)`: the size of the terminal on `fd`.
pub fn get_winsize(fd: BorrowedFd<'_>) -> Result<nix::pty::Winsize> {
    let mut ws = nix::pty::Winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into `ws`, valid and exclusively borrowed for the call.
    let r = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TIOCGWINSZ,
            &mut ws as *mut nix::pty::Winsize,
        )
    };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(ws)
    }
}
