//! The shared directory of a VM resumed from a template: a FUSE mount whose requests travel over
//! a virtio-serial port ([`FS_PORT_NAME`]) to the host's `moat-vmfs`, which serves them from the
//! VM's shared directory. A clone cannot have virtiofs (QEMU 7.2 cannot migrate vhost-user-fs, and
//! its backend cannot map a copy-on-write guest RAM), but a serial port is in every template.
//!
//! The agent mounts `fuse` with a `/dev/fuse` descriptor and forks one relay process (the agent
//! is single-threaded, so the fork is plain; the agent must stay free to serve requests while a
//! container's create reads the share). The relay copies each request read from `/dev/fuse` to
//! the port and each reply from the port to `/dev/fuse`: one read of `/dev/fuse` is one request,
//! and a reply is cut out of the port's byte stream by the length in its `fuse_out_header`. Both
//! descriptors are non-blocking and the relay keeps what the port cannot take yet, so a large
//! request and a large reply in flight at once never deadlock the two ends.
//!
//! The mount is `default_permissions` (the guest kernel checks modes and owners itself, as on a
//! local filesystem: the host server runs as root) and `allow_other`, `nosuid,nodev` like the
//! virtiofs share.
//!
//! When the host's server goes away, the relay exits: its `/dev/fuse` descriptor is the last one
//! (the agent closes its own after the fork), so the kernel aborts the connection and the share's
//! users get ENOTCONN instead of hanging.
//!
//! What it must never do: hand the host anything but FUSE requests, or write a partial reply to
//! `/dev/fuse`.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use moat_agent_proto::FS_PORT_NAME;
use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::mount::{mount, MsFlags};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::stat::Mode;

use crate::error::{AgentFailure, Result};

/// The largest request the kernel sends: `max_write` (the server's 1 MiB) plus a page of headers.
const REQUEST_MAX: usize = (1 << 20) + 4096;
/// `sizeof(struct fuse_out_header)`.
const OUT_HEADER: usize = 16;
/// Stop reading requests while this much waits for the port.
const PENDING_MAX: usize = 8 << 20;

/// The port's device when the host gave this VM one (it was resumed from a template).
pub fn port() -> Option<std::path::PathBuf> {
    crate::boot::find_port(FS_PORT_NAME, std::time::Duration::ZERO).ok()
}

/// Mount the share at `target` over the port `dev` and start the relay process.
pub fn mount_share(dev: &Path, target: &str) -> Result<()> {
    let fuse = open("/dev/fuse", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|errno| AgentFailure::Sys {
            what: "open /dev/fuse".into(),
            errno,
        })
        .map(moat_sys::fd::owned)?;
    let port = open(dev, OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|errno| AgentFailure::Sys {
            what: format!("open the share's port {}", dev.display()),
            errno,
        })
        .map(moat_sys::fd::owned)?;
    let opts = format!(
        "fd={},rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions",
        fuse.as_raw_fd()
    );
    mount(
        Some("moatfs"),
        target,
        Some("fuse.moatfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .map_err(|errno| AgentFailure::Sys {
        what: format!("mount the share (FUSE over {}) at {target}", dev.display()),
        errno,
    })?;
    match moat_sys::process::clone3(0, false).map_err(|errno| AgentFailure::Sys {
        what: "fork the share's relay".into(),
        errno,
    })? {
        moat_sys::process::Forked::Child => {
            crate::boot::never_oom_killed();
            // Only the two descriptors it relays: a copy of the agent's others (containers'
            // stdin pipes, forwarded sockets, pty masters) would keep them open for good.
            // (Copies above 10 first, so that moving them to 3 and 4 cannot clobber either.)
            use nix::fcntl::{fcntl, FcntlArg};
            let kept = fcntl(fuse.as_raw_fd(), FcntlArg::F_DUPFD(10))
                .and_then(|f| Ok((f, fcntl(port.as_raw_fd(), FcntlArg::F_DUPFD(10))?)))
                .and_then(|(f, p)| {
                    nix::unistd::dup2(f, 3)?;
                    nix::unistd::dup2(p, 4)
                })
                .and_then(|_| moat_sys::process::close_from(5));
            if let Err(e) = kept {
                crate::log::error(&format!("share relay: keep its descriptors: {e}"));
                moat_sys::process::exit_now(1);
            }
            let (fuse, port) = (moat_sys::fd::owned(3), moat_sys::fd::owned(4));
            let code = match relay(&fuse, &port) {
                Ok(()) => 0,
                Err(e) => {
                    crate::log::error(&format!("share relay: {e}"));
                    1
                }
            };
            moat_sys::process::exit_now(code)
        }
        moat_sys::process::Forked::Parent { .. } => Ok(()),
    }
}

fn set_nonblocking(fd: &OwnedFd) -> std::result::Result<(), Errno> {
    let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags)).map(drop)
}

/// Copy requests from `fuse` to `port` and replies back until the mount is gone.
fn relay(fuse: &OwnedFd, port: &OwnedFd) -> std::result::Result<(), String> {
    set_nonblocking(fuse).map_err(|e| format!("non-blocking /dev/fuse: {e}"))?;
    set_nonblocking(port).map_err(|e| format!("non-blocking port: {e}"))?;
    let mut request = vec![0u8; REQUEST_MAX];
    // Bytes read from /dev/fuse that the port has not taken yet.
    let mut to_host: Vec<u8> = Vec::with_capacity(REQUEST_MAX);
    let mut sent = 0usize;
    // Bytes of replies read from the port, the first one possibly incomplete.
    let mut from_host: Vec<u8> = vec![0u8; REQUEST_MAX];
    let mut have = 0usize;
    let mut served = false;
    loop {
        let pending = to_host.len() - sent;
        let mut fuse_events = PollFlags::empty();
        if pending < PENDING_MAX {
            fuse_events |= PollFlags::POLLIN;
        }
        let mut port_events = PollFlags::POLLIN;
        if pending > 0 {
            port_events |= PollFlags::POLLOUT;
        }
        let mut fds = [
            PollFd::new(fuse.as_fd(), fuse_events),
            PollFd::new(port.as_fd(), port_events),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(format!("poll: {e}")),
        }
        let fuse_ready = fds[0].revents().unwrap_or(PollFlags::empty());
        let port_ready = fds[1].revents().unwrap_or(PollFlags::empty());
        if fuse_ready.intersects(PollFlags::POLLIN | PollFlags::POLLERR) {
            match nix::unistd::read(fuse.as_raw_fd(), &mut request) {
                Ok(n) => to_host.extend_from_slice(&request[..n]),
                // ENODEV: unmounted, the relay's work is done.
                Err(Errno::ENODEV) => return Ok(()),
                Err(Errno::EAGAIN | Errno::EINTR | Errno::ENOENT) => {}
                Err(e) => return Err(format!("read /dev/fuse: {e}")),
            }
        }
        if to_host.len() > sent {
            match nix::unistd::write(port, &to_host[sent..]) {
                Ok(n) => {
                    sent += n;
                    // The host took bytes: it is connected (EAGAIN until it is).
                    served = true;
                }
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                Err(e) => return Err(format!("write to the port: {e}")),
            }
            // The port takes 32 KiB per write: drop what it took, or a queue that never empties
            // under steady I/O would grow without bound.
            if sent == to_host.len() || sent >= REQUEST_MAX {
                to_host.drain(..sent);
                sent = 0;
            }
        }
        if port_ready.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            match nix::unistd::read(port.as_raw_fd(), &mut from_host[have..]) {
                // The server is gone (it was connected): end the relay, which closes the last
                // /dev/fuse descriptor and so aborts the connection. Every waiting and later
                // request fails with ENOTCONN instead of hanging.
                Ok(0) if served => return Err("the host's server closed the port".into()),
                Ok(0) => {
                    // Not connected yet as the guest sees it: wait instead of spinning.
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Ok(n) => have += n,
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                Err(e) => return Err(format!("read the port: {e}")),
            }
            // Hand every complete reply to the kernel.
            let mut at = 0;
            while have - at >= OUT_HEADER {
                let len = u32::from_le_bytes(from_host[at..at + 4].try_into().unwrap()) as usize;
                if !(OUT_HEADER..=REQUEST_MAX).contains(&len) {
                    return Err(format!("a reply of {len} bytes from the host"));
                }
                if have - at < len {
                    break;
                }
                match nix::unistd::write(fuse, &from_host[at..at + len]) {
                    // ENOENT: the request was interrupted meanwhile.
                    Ok(_) | Err(Errno::ENOENT) => {}
                    Err(Errno::ENODEV) => return Ok(()),
                    Err(e) => return Err(format!("write a reply to /dev/fuse: {e}")),
                }
                at += len;
            }
            from_host.copy_within(at..have, 0);
            have -= at;
        }
    }
}
