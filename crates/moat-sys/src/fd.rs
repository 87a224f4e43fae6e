//! File-descriptor plumbing: passing descriptors over unix sockets (`SCM_RIGHTS`), and the sealed
//! in-memory copy of the runtime binary that protects it against CVE-2019-5736.
//!
//! The CVE: a process inside the container opens `/proc/<runtime pid>/exe` while the runtime is
//! inside the container's namespaces and later writes through it, replacing the host's runtime
//! binary. The defence (the one runc and crun use): before entering a container, re-execute the
//! runtime from a sealed memfd copy, so `/proc/self/exe` names an anonymous, write-sealed file.

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

/// True when the running executable is a write-sealed memfd (we were already re-executed).
pub fn running_from_sealed_copy() -> bool {
    let Ok(fd) = nix::fcntl::open(
        "/proc/self/exe",
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) else {
        return false;
    };
    // SAFETY: `open` returned a new descriptor that nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    match fcntl(fd.as_raw_fd(), FcntlArg::F_GET_SEALS) {
        Ok(bits) => SealFlag::from_bits_truncate(bits).contains(SEALS),
        Err(_) => false,
    }
}

/// Re-execute the current program from a sealed memfd copy of `/proc/self/exe`, with the same
/// arguments and environment. Returns only on failure.
pub fn reexec_from_sealed_copy() -> Errno {
    match sealed_copy_of_self() {
        Ok(memfd) => {
            let args: Vec<CString> = std::env::args_os()
                .filter_map(|a| {
                    CString::new(std::os::unix::ffi::OsStrExt::as_bytes(a.as_os_str())).ok()
                })
                .collect();
            let env: Vec<CString> = std::env::vars_os()
                .filter_map(|(k, v)| {
                    let mut kv = k.into_encoded_bytes();
                    kv.push(b'=');
                    kv.extend(v.into_encoded_bytes());
                    CString::new(kv).ok()
                })
                .collect();
            match nix::unistd::fexecve(memfd.as_raw_fd(), &args, &env) {
                Ok(never) => match never {},
                Err(e) => e,
            }
        }
        Err(e) => e,
    }
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
    fcntl(memfd.as_raw_fd(), FcntlArg::F_ADD_SEALS(SEALS))?;
    Ok(memfd)
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
