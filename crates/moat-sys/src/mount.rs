//! Mount helpers that act on descriptors rather than paths, so that what is mounted on is exactly
//! what was resolved inside the root (the CVE-2021-30465 class of races).

use std::os::fd::BorrowedFd;

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
