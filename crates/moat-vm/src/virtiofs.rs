//! The directory a VM shares with its guest over virtiofs, for the containers' bind mounts.
//!
//! One `virtiofsd` (QEMU's, `/usr/lib/qemu/virtiofsd` or `$MOAT_VIRTIOFSD`) per VM serves
//! `<run dir>/shared`. That directory stays empty on the host: the binds are made in a *private
//! mount namespace* that a dedicated thread creates (`unshare(CLONE_NEWNS)` is per thread), made
//! a slave of the host's (`MS_REC | MS_SLAVE`) so nothing propagates back. In it the thread
//! mounts a small tmpfs on `shared`, creates one mount point per bind (`<container>/<n>`),
//! bind-mounts each source there — read-only ones remounted `MS_RDONLY`, every submount of a
//! recursive one too — remounts the tmpfs read-only and spawns virtiofsd, which inherits the
//! namespace. virtiofsd then makes its own namespaces and pivots into `shared` (its rbind keeps
//! the read-only flags), so the guest reaches exactly the bound sources, and a read-only one
//! stays read-only whatever the guest kernel does. When virtiofsd is gone no process holds the
//! namespace and its mounts vanish: nothing to unmount on the host, ever.
//!
//! Adding binds to a running VM (one VM per pod, [`add_binds`]): a thread clones each source in
//! the host namespace (`open_tree(OPEN_TREE_CLONE)`, made read-only with `mount_setattr` before
//! it is attached anywhere when asked), then enters the mount namespace of virtiofsd's serving
//! process (`unshare(CLONE_FS)`, `setns` on `/proc/<pid>/ns/mnt`; its root is the shared tmpfs
//! after virtiofsd's `pivot_root`), remounts the tmpfs writable, attaches each tree at its
//! target (`move_mount`) and remounts the tmpfs read-only. [`remove_binds`] detaches them again.
//!
//! What it must never do: mount anything in the host's mount namespace, or share a path the
//! caller did not ask for.

use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::mount::{mount, MsFlags};

use crate::error::{Result, VmError};

/// The directory of the run dir that virtiofsd serves, and its socket.
pub const SHARED_DIR: &str = "shared";
pub const SOCKET: &str = "fs.sock";

/// One host path made visible in the shared directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedBind {
    /// Absolute host path of a directory or regular file (symlinks are followed).
    pub source: PathBuf,
    /// Where it appears in the shared directory: relative, normal components only.
    pub target: PathBuf,
    pub readonly: bool,
    /// `rbind`: the mounts below `source` come along.
    pub recursive: bool,
    /// The mount asked for `rslave` or `rshared` propagation: mounts the host makes below
    /// `source` later reach the share (as a slave: nothing goes back). Otherwise the bind is
    /// private, so nothing the host mounts later (with flags of its own, writable under a
    /// read-only bind) reaches the share.
    pub propagate: bool,
}

/// What a VM shares with its guest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SharedDir {
    pub binds: Vec<SharedBind>,
}

/// The virtiofsd binary.
pub fn virtiofsd_binary() -> PathBuf {
    std::env::var_os("MOAT_VIRTIOFSD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/qemu/virtiofsd"))
}

impl SharedDir {
    /// Check every bind before anything is created: relative normal targets, no duplicates,
    /// sources that exist and are directories or regular files.
    pub fn validate(&self) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        for b in &self.binds {
            let normal = b.target.components().count() > 0
                && b.target
                    .components()
                    .all(|c| matches!(c, Component::Normal(_)));
            if !normal || !seen.insert(&b.target) {
                return Err(VmError::Config(format!(
                    "shared target {}",
                    b.target.display()
                )));
            }
            if !b.source.is_absolute() {
                return Err(VmError::Config(format!(
                    "bind source {} is not absolute",
                    b.source.display()
                )));
            }
            let md = std::fs::metadata(&b.source).map_err(VmError::io("bind source", &b.source))?;
            if !md.is_dir() && !md.is_file() {
                return Err(VmError::Config(format!(
                    "bind source {} is neither a directory nor a regular file",
                    b.source.display()
                )));
            }
        }
        Ok(())
    }
}

/// Start virtiofsd serving `<run>/shared` filled with `dir`'s binds, and wait for its socket
/// (`<run>/fs.sock`). Its stderr goes to `<run>/virtiofsd.stderr`.
pub fn spawn(run: &Path, dir: &SharedDir) -> Result<Child> {
    let socket = run.join(SOCKET);
    let stderr_path = run.join("virtiofsd.stderr");
    let stderr =
        std::fs::File::create(&stderr_path).map_err(VmError::io("create", &stderr_path))?;
    let bin = virtiofsd_binary();
    let mut cmd = Command::new(&bin);
    cmd.arg(format!("--socket-path={}", socket.display()))
        .arg("-o")
        .arg(format!("source={}", run.join(SHARED_DIR).display()))
        .args([
            "-o",
            "sandbox=namespace",
            "-o",
            "cache=auto",
            "-o",
            "no_xattr",
        ])
        .args(["-o", "announce_submounts", "-o", "log_level=warn"])
        // The host lacks CAP_SYS_RESOURCE: leave RLIMIT_NOFILE as it is.
        .arg("--rlimit-nofile=0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    {
        use std::os::unix::process::CommandExt;
        // Its own process group, like QEMU: it outlives a detaching `create`.
        cmd.process_group(0);
    }
    let mut child = spawn_in_share(run, dir, &mut cmd, &bin)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        let failed = match child.try_wait() {
            Ok(Some(st)) => Some(format!("exited: {st}")),
            Ok(None) if Instant::now() > deadline => Some("no socket within 10 s".into()),
            Ok(None) => None,
            Err(e) => Some(e.to_string()),
        };
        if let Some(reason) = failed {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            return Err(VmError::Virtiofsd {
                reason: format!("{}: {reason}", bin.display()),
                stderr: log.trim().to_string(),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(child)
}

/// Make `<run>/shared` hold `dir`'s binds in a private mount namespace and spawn `cmd` (the
/// share's server, `bin`) there; the namespace lives as long as the server's processes.
pub(crate) fn spawn_in_share(
    run: &Path,
    dir: &SharedDir,
    cmd: &mut Command,
    bin: &Path,
) -> Result<Child> {
    dir.validate()?;
    let shared = run.join(SHARED_DIR);
    std::fs::create_dir_all(&shared).map_err(VmError::io("create", &shared))?;
    std::thread::scope(|s| {
        s.spawn(|| -> Result<Child> {
            prepare_namespace(&shared, &dir.binds)?;
            cmd.spawn().map_err(|source| VmError::Spawn {
                program: bin.display().to_string(),
                source,
            })
        })
        .join()
        .unwrap_or_else(|_| Err(VmError::Config("the namespace thread panicked".into())))
    })
}

/// The process of virtiofsd (started as `pid`) that serves the share: with
/// `-o sandbox=namespace` the first process forks a child into new namespaces, which pivots into
/// the shared directory; that child's mount namespace is where binds are attached.
fn serving_process(pid: u32) -> Result<u32> {
    let path = PathBuf::from(format!("/proc/{pid}/task/{pid}/children"));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&path).map_err(VmError::io("read", &path))?;
        if let Some(child) = text.split_whitespace().next().and_then(|c| c.parse().ok()) {
            return Ok(child);
        }
        if Instant::now() > deadline {
            return Err(VmError::Config(format!(
                "virtiofsd {pid} has no serving child process"
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Run `f` on a new thread inside the mount namespace of virtiofsd's serving process (its root
/// is the shared tmpfs, remounted writable for the duration of `f`).
fn in_share_namespace<T: Send>(
    virtiofsd_pid: u32,
    f: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    let server = serving_process(virtiofsd_pid)?;
    let ns_path = PathBuf::from(format!("/proc/{server}/ns/mnt"));
    let ns = std::fs::File::open(&ns_path).map_err(VmError::io("open", &ns_path))?;
    std::thread::scope(|s| {
        s.spawn(move || -> Result<T> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)
                .map_err(sys("unshare the filesystem attributes".into()))?;
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNS).map_err(sys(format!(
                "enter the mount namespace {}",
                ns_path.display()
            )))?;
            let root = Path::new("/");
            let fixed = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
            mount(
                None::<&str>,
                root,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | fixed,
                None::<&str>,
            )
            .map_err(sys("remount the share writable".into()))?;
            let r = f();
            let ro = remount_readonly(root);
            let v = r?;
            ro?;
            Ok(v)
        })
        .join()
        .unwrap_or_else(|_| Err(VmError::Config("the namespace thread panicked".into())))
    })
}

/// Add `binds` to the share of a running VM whose virtiofsd was started as `virtiofsd_pid`.
/// Each source is cloned in the caller's mount namespace (read-only ones made read-only before
/// they are attached), so the host's mount table never changes.
pub fn add_binds(virtiofsd_pid: u32, binds: &[SharedBind]) -> Result<()> {
    SharedDir {
        binds: binds.to_vec(),
    }
    .validate()?;
    let mut trees = Vec::with_capacity(binds.len());
    for b in binds {
        let tree = moat_sys::mount::open_tree_clone(&b.source, b.recursive).map_err(sys(
            format!("clone the mount tree of {}", b.source.display()),
        ))?;
        use moat_sys::mount::{
            MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY,
        };
        let mut attrs = MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC;
        if b.readonly {
            attrs |= MOUNT_ATTR_RDONLY;
        }
        use std::os::fd::AsFd;
        let propagation = if b.propagate {
            MsFlags::MS_SLAVE
        } else {
            MsFlags::MS_PRIVATE
        };
        moat_sys::mount::set_tree_attrs(tree.as_fd(), b.recursive, attrs, propagation.bits())
            .map_err(sys(format!("restrict the clone of {}", b.source.display())))?;
        trees.push((tree, b.source.is_dir(), Path::new("/").join(&b.target)));
    }
    in_share_namespace(virtiofsd_pid, move || {
        for (tree, dir, target) in &trees {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(VmError::io("create", parent))?;
            }
            let made = if *dir {
                std::fs::create_dir(target)
            } else {
                std::fs::File::create_new(target).map(drop)
            };
            made.map_err(VmError::io("create", target))?;
            use std::os::fd::AsFd;
            moat_sys::mount::move_mount_to(tree.as_fd(), target)
                .map_err(sys(format!("attach a bind at {}", target.display())))?;
        }
        Ok(())
    })
}

/// Detach the binds at `targets` (relative to the share) of a running VM and remove their mount
/// points; a target that is not there is skipped.
pub fn remove_binds(virtiofsd_pid: u32, targets: &[PathBuf]) -> Result<()> {
    let targets: Vec<PathBuf> = targets
        .iter()
        .filter(|t| {
            t.components().count() > 0 && t.components().all(|c| matches!(c, Component::Normal(_)))
        })
        .map(|t| Path::new("/").join(t))
        .collect();
    in_share_namespace(virtiofsd_pid, move || {
        for t in &targets {
            if !t.exists() {
                continue;
            }
            let _ = nix::mount::umount2(t, nix::mount::MntFlags::MNT_DETACH);
            let removed = if t.is_dir() {
                std::fs::remove_dir(t)
            } else {
                std::fs::remove_file(t)
            };
            removed.map_err(VmError::io("remove", t))?;
        }
        Ok(())
    })
}

fn sys(what: String) -> impl FnOnce(nix::errno::Errno) -> VmError {
    move |errno| VmError::Mount { what, errno }
}

/// In the calling thread: a private mount namespace (slave of the host's) with a read-only
/// tmpfs on `shared` holding the binds.
fn prepare_namespace(shared: &Path, binds: &[SharedBind]) -> Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(sys("unshare the mount namespace".into()))?;
    slave_root().map_err(sys("make / a slave mount".into()))?;
    let fixed = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some("tmpfs"),
        shared,
        Some("tmpfs"),
        fixed,
        Some("size=1m,nr_inodes=4096,mode=0755"),
    )
    .map_err(sys(format!("mount tmpfs at {}", shared.display())))?;
    for b in binds {
        let target = shared.join(&b.target);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(VmError::io("create", parent))?;
        }
        if b.source.is_dir() {
            std::fs::create_dir(&target).map_err(VmError::io("create", &target))?;
        } else {
            std::fs::File::create(&target).map_err(VmError::io("create", &target))?;
        }
        let mut flags = MsFlags::MS_BIND;
        if b.recursive {
            flags |= MsFlags::MS_REC;
        }
        mount(Some(&b.source), &target, None::<&str>, flags, None::<&str>).map_err(sys(
            format!("bind {} at {}", b.source.display(), target.display()),
        ))?;
        for m in mounts_under(&target)? {
            restrict(&m, b.readonly)?;
        }
        if !b.propagate {
            mount(
                None::<&str>,
                &target,
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .map_err(sys(format!("make {} private", target.display())))?;
        }
    }
    remount_readonly(shared)
}

/// Make every mount of this (new) mount namespace a slave of the one it was copied from: mounts
/// made here never propagate back.
pub(crate) fn slave_root() -> nix::Result<()> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
}

/// `MS_RDONLY` on the mount at `path`, keeping its other per-mount flags.
fn remount_readonly(path: &Path) -> Result<()> {
    remount_adding(path, MsFlags::MS_RDONLY, "read-only")
}

/// A bind of the share as its server sees it: no device node, set-id bit or executable of it acts
/// for the server (the server never opens a device node the guest made, and with this it could
/// not either), and `readonly` ones read-only. What the guest writes into a writable bind is
/// still seen by the host through its own mounts of the directory, as a container's writes to
/// a bind are.
fn restrict(path: &Path, readonly: bool) -> Result<()> {
    let mut add = MsFlags::MS_NODEV | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    if readonly {
        add |= MsFlags::MS_RDONLY;
    }
    remount_adding(path, add, "nodev,nosuid,noexec")
}

/// Remount the mount at `path` with `add` on top of its per-mount flags.
fn remount_adding(path: &Path, add: MsFlags, what: &str) -> Result<()> {
    let st =
        nix::sys::statvfs::statvfs(path).map_err(sys(format!("statvfs {}", path.display())))?;
    let f = st.flags();
    use nix::sys::statvfs::FsFlags;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | add;
    for (have, want) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(have) {
            flags |= want;
        }
    }
    mount(None::<&str>, path, None::<&str>, flags, None::<&str>)
        .map_err(sys(format!("remount {} {what}", path.display())))
}

/// The mount points at or below `top` in this thread's mount namespace, `top` first.
fn mounts_under(top: &Path) -> Result<Vec<PathBuf>> {
    let info = Path::new("/proc/thread-self/mountinfo");
    let text = std::fs::read_to_string(info).map_err(VmError::io("read", info))?;
    let mut out: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|p| p.starts_with(top))
        .collect();
    out.sort_by_key(|p| p.components().count());
    out.dedup();
    Ok(out)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/a\040b\134c"), Path::new("/a b\\c"));
        assert_eq!(unescape_mountinfo(r"/x\04"), Path::new(r"/x\04"));
    }

    #[test]
    fn validate_refuses_escaping_targets_and_missing_sources() {
        let b = |t: &str, s: &str| SharedDir {
            binds: vec![SharedBind {
                source: s.into(),
                target: t.into(),
                readonly: false,
                recursive: false,
                propagate: false,
            }],
        };
        assert!(b("c/0", "/").validate().is_ok());
        assert!(b("../x", "/").validate().is_err());
        assert!(b("/abs", "/").validate().is_err());
        assert!(b("", "/").validate().is_err());
        assert!(b("c/0", "relative").validate().is_err());
        assert!(b("c/0", "/nonexistent-moat-source").validate().is_err());
        assert!(b("c/0", "/dev/null").validate().is_err());
    }
}
