//! The container's terminal: a pty opened inside the container's own devpts, its master sent to
//! the caller's `--console-socket` over SCM_RIGHTS (what runc does, so conmon and containerd's
//! shim receive it unchanged), its slave made the controlling terminal and stdio of the init.
//! The slave is owned by the process user (runc's `fixStdioPermissions`: the uid only, the group
//! stays devpts' `gid=`), sized from `process.consoleSize`.
//!
//! The socket is either the caller's `--console-socket` path or one the runtime already holds
//! (`CreateOptions::console`: the end of a socketpair when `moat-runtime run` relays the terminal
//! itself, as runc does without `--console-socket`).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use oci_spec::runtime::Process;

use crate::error::{InitFailure, Step};

pub fn setup(socket: &OwnedFd, process: &Process) -> Result<(), InitFailure> {
    let cerr = |what: &'static str| move |e| InitFailure::new(Step::Console, what, e);
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(cerr("open /dev/ptmx (is devpts mounted at /dev/pts?)"))?;
    nix::pty::grantpt(&master).map_err(cerr("grantpt"))?;
    nix::pty::unlockpt(&master).map_err(cerr("unlockpt"))?;
    let name = nix::pty::ptsname_r(&master).map_err(cerr("ptsname"))?;
    if let Some(sz) = process.console_size() {
        let ws = nix::pty::Winsize {
            ws_row: sz.height() as u16,
            ws_col: sz.width() as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        moat_sys::fd::set_winsize(master.as_fd(), &ws).map_err(cerr("set console size"))?;
    }
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map(moat_sys::fd::owned)
    .map_err(cerr("open pty slave"))?;
    let uid = process.user().uid();
    if uid != 0 {
        nix::unistd::fchown(
            slave.as_raw_fd(),
            Some(nix::unistd::Uid::from_raw(uid)),
            None,
        )
        .map_err(|e| InitFailure::new(Step::Console, format!("chown {name} to uid {uid}"), e))?;
    }
    moat_sys::fd::send_fds(socket.as_fd(), name.as_bytes(), &[master.as_raw_fd()])
        .map_err(cerr("send the pty master to the console socket"))?;
    drop(master);
    for target in 0..=2 {
        nix::unistd::dup2(slave.as_raw_fd(), target).map_err(cerr("dup2 pty slave onto stdio"))?;
    }
    moat_sys::fd::set_controlling_tty(slave.as_fd())
        .map_err(cerr("make the pty the controlling terminal"))?;
    Ok(())
}

/// The runtime side: a copy of the socket the runtime already holds (`held`), else a connection
/// to the caller's `--console-socket` (made before forking, so the init inherits it and needs no
/// path inside the container).
pub fn connect(
    held: Option<&Arc<OwnedFd>>,
    path: Option<&std::path::Path>,
) -> crate::error::Result<Option<OwnedFd>> {
    if let Some(fd) = held {
        return fd.try_clone().map(Some).map_err(crate::error::io(
            "duplicate the console socket",
            "socketpair",
        ));
    }
    path.map(|p| {
        std::os::unix::net::UnixStream::connect(p)
            .map(OwnedFd::from)
            .map_err(|source| crate::error::ContainerError::ConsoleSocket {
                path: p.into(),
                source,
            })
    })
    .transpose()
}
