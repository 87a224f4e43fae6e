//! `tmpcopyup` (a runc and crun extension podman uses for its tmpfs mounts): a tmpfs mounted over
//! a directory of the image starts with a copy of what that directory held. The copy walks the
//! covered directory through a descriptor opened before the mount and writes into the new tmpfs
//! with `*at` calls relative to descriptors only, never following a symlink: a link in the image
//! is copied as a link, never resolved on the host.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FchmodatFlags, Mode, SFlag};
use nix::unistd::{Gid, Uid};

/// Copy the contents of directory `from` into directory `to` (both already open), keeping modes,
/// owners and symlinks; device nodes and FIFOs are recreated with mknod.
pub fn copy_dir(from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> nix::Result<()> {
    let mut dir = nix::dir::Dir::openat(
        Some(from.as_raw_fd()),
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let names: Vec<std::ffi::CString> = dir
        .iter()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_owned())
        .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
        .collect();
    for name in names {
        let st = nix::sys::stat::fstatat(
            Some(from.as_raw_fd()),
            name.as_c_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
        let kind = SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT);
        let perm = Mode::from_bits_truncate(st.st_mode & 0o7777);
        let (uid, gid) = (
            Some(Uid::from_raw(st.st_uid)),
            Some(Gid::from_raw(st.st_gid)),
        );
        let chown_entry = || {
            nix::unistd::fchownat(
                Some(to.as_raw_fd()),
                name.as_c_str(),
                uid,
                gid,
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
        };
        match kind {
            SFlag::S_IFDIR => {
                nix::sys::stat::mkdirat(
                    Some(to.as_raw_fd()),
                    name.as_c_str(),
                    Mode::from_bits_truncate(0o700),
                )?;
                let open = |fd: BorrowedFd<'_>| -> nix::Result<OwnedFd> {
                    nix::fcntl::openat(
                        Some(fd.as_raw_fd()),
                        name.as_c_str(),
                        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    )
                    .map(moat_sys::fd::owned)
                };
                let (sub_from, sub_to) = (open(from)?, open(to)?);
                copy_dir(sub_from.as_fd(), sub_to.as_fd())?;
                nix::unistd::fchown(sub_to.as_raw_fd(), uid, gid)?;
                nix::sys::stat::fchmod(sub_to.as_raw_fd(), perm)?;
            }
            SFlag::S_IFREG => {
                let src = nix::fcntl::openat(
                    Some(from.as_raw_fd()),
                    name.as_c_str(),
                    OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map(moat_sys::fd::owned)?;
                let dst = nix::fcntl::openat(
                    Some(to.as_raw_fd()),
                    name.as_c_str(),
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map(moat_sys::fd::owned)?;
                let (mut r, mut w) = (std::fs::File::from(src), std::fs::File::from(dst));
                std::io::copy(&mut r, &mut w).map_err(|e| moat_sys::process::io_errno(&e))?;
                nix::unistd::fchown(w.as_raw_fd(), uid, gid)?;
                nix::sys::stat::fchmod(w.as_raw_fd(), perm)?;
            }
            SFlag::S_IFLNK => {
                let target = nix::fcntl::readlinkat(Some(from.as_raw_fd()), name.as_c_str())?;
                nix::unistd::symlinkat(target.as_os_str(), Some(to.as_raw_fd()), name.as_c_str())?;
                chown_entry()?;
            }
            SFlag::S_IFCHR | SFlag::S_IFBLK | SFlag::S_IFIFO | SFlag::S_IFSOCK => {
                nix::sys::stat::mknodat(
                    Some(to.as_raw_fd()),
                    name.as_c_str(),
                    kind,
                    perm,
                    st.st_rdev,
                )?;
                chown_entry()?;
                nix::sys::stat::fchmodat(
                    Some(to.as_raw_fd()),
                    name.as_c_str(),
                    perm,
                    FchmodatFlags::NoFollowSymlink,
                )
                .or_else(|e| {
                    if e == Errno::EOPNOTSUPP {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })?;
            }
            _ => {}
        }
    }
    Ok(())
}
