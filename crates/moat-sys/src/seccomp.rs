//! Installing a seccomp filter (`seccomp(SECCOMP_SET_MODE_FILTER)`), and handing its user-notify
//! listener descriptor out. The program itself is compiled by `moat-seccomp`.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

use crate::Result;

pub const FILTER_FLAG_TSYNC: u32 = 1;
pub const FILTER_FLAG_NEW_LISTENER: u32 = 8;

/// Install `prog` (8 bytes per instruction, as `moat_seccomp::program_bytes` makes it) on the
/// calling thread. The caller has set no_new_privs or holds CAP_SYS_ADMIN. Returns the listener
/// descriptor when `flags` has NEW_LISTENER. Does not allocate.
pub fn set_mode_filter(prog: &[u8], flags: u32) -> Result<Option<OwnedFd>> {
    if prog.is_empty() || !prog.len().is_multiple_of(8) || prog.len() / 8 > 4096 {
        return Err(Errno::EINVAL);
    }
    let fprog = libc::sock_fprog {
        len: (prog.len() / 8) as libc::c_ushort,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `fprog` points into `prog`, alive for the call; the kernel copies the program
    // (copy_from_user, no alignment requirement) and keeps no pointer to it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags as libc::c_ulong,
            &fprog as *const libc::sock_fprog,
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    if flags & FILTER_FLAG_NEW_LISTENER != 0 {
        // SAFETY: with NEW_LISTENER a successful call returns a new descriptor nobody else owns.
        return Ok(Some(unsafe { OwnedFd::from_raw_fd(r as RawFd) }));
    }
    // With TSYNC (without TSYNC_ESRCH) a positive return is the thread that could not sync.
    if r > 0 {
        return Err(Errno::ESRCH);
    }
    Ok(None)
}
