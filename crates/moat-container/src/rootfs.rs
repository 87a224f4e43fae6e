//! The container's root filesystem, built inside its new mount namespace: root propagation, the
//! self bind of `root.path`, every spec mount, the default `/dev` and `linux.devices`, then
//! `pivot_root` (or MS_MOVE + chroot with `--no-pivot`), masked and read-only paths, and a read-only
//! root. Every target inside the rootfs is resolved with `openat2(RESOLVE_IN_ROOT)` and mounted on
//! through its descriptor, so a symlink planted in the rootfs can never redirect a mount to the host
//! (CVE-2021-30465).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use moat_sys::mount::mount_on_fd;
use moat_sys::resolve::{mkdir_all_in_root, open_in_root, proc_fd_path, Leaf};
use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};
use oci_spec::runtime::{LinuxDeviceType, Mount, Spec};

use crate::error::{InitFailure, Step};
use crate::mountopts::ParsedOptions;

type R<T> = std::result::Result<T, InitFailure>;

/// What rootfs setup needs from the runtime.
pub struct RootfsPlan<'a> {
    pub spec: &'a Spec,
    pub bundle: &'a Path,
    pub rootfs: &'a Path,
    pub in_userns: bool,
    pub new_cgroupns: bool,
    pub cgroup: Option<&'a moat_cgroups::Cgroup>,
    /// Returns once the init is in its cgroup (and in its cgroup namespace, if it has one of its
    /// own); called before a cgroup mount and before `prepare` returns.
    pub placed: &'a dyn Fn() -> R<()>,
}

/// Standard device nodes every container gets (runc's `AllowedDevices` that are created).
const DEFAULT_DEVICES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

const DEV_SYMLINKS: &[(&str, &str)] = &[
    ("/proc/self/fd", "fd"),
    ("/proc/self/fd/0", "stdin"),
    ("/proc/self/fd/1", "stdout"),
    ("/proc/self/fd/2", "stderr"),
];

fn mnt_err(detail: String) -> impl FnOnce(Errno) -> InitFailure {
    move |e| InitFailure::new(Step::Mount, detail, e)
}

/// Before pivot: propagation, bind of the rootfs, the spec mounts and /dev. Returns an `O_PATH`
/// descriptor on the (bind-mounted) rootfs.
pub fn prepare(plan: &RootfsPlan<'_>) -> R<OwnedFd> {
    crate::propagation::prepare_root(plan.spec, plan.rootfs)?;
    let rootfs = plan
        .rootfs
        .to_str()
        .ok_or_else(|| InitFailure::msg(Step::Mount, "root.path is not UTF-8"))?;
    mount(
        Some(rootfs),
        rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(mnt_err(format!("bind rootfs {rootfs}")))?;
    mount(
        None::<&str>,
        rootfs,
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(mnt_err(format!("make rootfs {rootfs} private")))?;
    let root = nix::fcntl::open(
        plan.rootfs,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map(moat_sys::fd::owned)
    .map_err(mnt_err(format!("open rootfs {rootfs}")))?;

    let mounts = plan.spec.mounts().clone().unwrap_or_default();
    let mut dev_from_host = false;
    for m in &mounts {
        let opts = ParsedOptions::parse(&m.options().clone().unwrap_or_default());
        if m.destination() == Path::new("/dev") && opts.is_bind() {
            dev_from_host = true;
        }
        mount_one(plan, &root, m, &opts)?;
    }
    if !dev_from_host {
        default_devices(plan, &root)?;
    }
    linux_devices(plan, &root)?;
    (plan.placed)()?;
    Ok(root)
}

fn mount_one(plan: &RootfsPlan<'_>, root: &OwnedFd, m: &Mount, opts: &ParsedOptions) -> R<()> {
    let dest = m.destination();
    let typ = m
        .typ()
        .as_deref()
        .unwrap_or(if opts.is_bind() { "bind" } else { "none" });
    let bind = opts.is_bind() || typ == "bind";
    let source: Option<PathBuf> = m.source().as_ref().map(|s| {
        if s.is_absolute() || !bind {
            s.clone()
        } else {
            plan.bundle.join(s)
        }
    });
    let what = format!(
        "{} on {}",
        source.as_deref().unwrap_or(Path::new(typ)).display(),
        dest.display()
    );

    if typ == "cgroup" || typ == "cgroup2" {
        return mount_cgroup(plan, root, dest, opts);
    }
    let leaf = if bind {
        let src = source.as_ref().ok_or_else(|| {
            InitFailure::msg(
                Step::Mount,
                format!("bind mount on {} has no source", dest.display()),
            )
        })?;
        let meta = std::fs::metadata(src).map_err(|e| {
            InitFailure::new(
                Step::Mount,
                format!("bind source {}", src.display()),
                moat_sys::process::io_errno(&e),
            )
        })?;
        if meta.is_dir() {
            Leaf::Dir
        } else {
            Leaf::File
        }
    } else {
        Leaf::Dir
    };
    if typ == "proc" || typ == "sysfs" {
        ordinary_directory(root, dest, typ)?;
    }
    let target = mkdir_all_in_root(root.as_fd(), dest, leaf, 0o755)
        .map_err(mnt_err(format!("create mount point {}", dest.display())))?;
    let data = opts.data_string();
    if bind {
        let src = source.as_ref().and_then(|s| s.to_str()).unwrap_or_default();
        let rec = opts.flags & MsFlags::MS_REC;
        mount_on_fd(
            Some(src),
            target.as_fd(),
            None,
            MsFlags::MS_BIND | rec,
            None,
        )
        .map_err(mnt_err(format!("bind {what}")))?;
        let extra = opts.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        if !extra.is_empty() {
            // Re-open the target: the descriptor taken before the mount names the covered directory.
            let top = open_in_root(root.as_fd(), dest, libc::O_PATH, 0)
                .map_err(mnt_err(format!("reopen {}", dest.display())))?;
            let mut locked = locked_flags(&top);
            let atime = MsFlags::MS_NOATIME | MsFlags::MS_RELATIME | MsFlags::MS_STRICTATIME;
            if extra.intersects(atime) {
                // The mode asked replaces the source's (noatime kept beside relatime would win).
                locked.remove(atime);
            }
            mount_on_fd(
                None,
                top.as_fd(),
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra | locked,
                None,
            )
            .map_err(mnt_err(format!(
                "remount {what} with {:?}",
                m.options().clone().unwrap_or_default()
            )))?;
        }
    } else {
        // tmpcopyup: the directory about to be covered, to copy into the new tmpfs.
        let covered = if opts.tmpcopyup && typ == "tmpfs" {
            Some(
                open_in_root(root.as_fd(), dest, libc::O_RDONLY | libc::O_DIRECTORY, 0)
                    .map_err(mnt_err(format!("open {} for tmpcopyup", dest.display())))?,
            )
        } else {
            None
        };
        let src = source.as_ref().and_then(|s| s.to_str()).unwrap_or(typ);
        // A read-only tmpfs with tmpcopyup is filled first, then made read-only (as runc).
        let flags = if covered.is_some() {
            opts.flags & !MsFlags::MS_RDONLY
        } else {
            opts.flags
        };
        let r = mount_on_fd(Some(src), target.as_fd(), Some(typ), flags, data.as_deref());
        match r {
            Ok(()) => {}
            // sysfs cannot be mounted in a user namespace that does not own the network namespace:
            // bind the host's /sys read-only instead, as runc does.
            Err(Errno::EPERM) if typ == "sysfs" && plan.in_userns => {
                mount_on_fd(
                    Some("/sys"),
                    target.as_fd(),
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None,
                )
                .map_err(mnt_err(format!("bind /sys on {}", dest.display())))?;
                let top = open_in_root(root.as_fd(), dest, libc::O_PATH, 0)
                    .map_err(mnt_err(format!("reopen {}", dest.display())))?;
                let locked = locked_flags(&top);
                mount_on_fd(
                    None,
                    top.as_fd(),
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | locked,
                    None,
                )
                .map_err(mnt_err(format!("remount {} read-only", dest.display())))?;
            }
            Err(e) => {
                return Err(InitFailure::new(
                    Step::Mount,
                    format!(
                        "mount {what} (type {typ}, options {:?})",
                        m.options().clone().unwrap_or_default()
                    ),
                    e,
                ))
            }
        }
        if let Some(old) = covered {
            let new = open_in_root(root.as_fd(), dest, libc::O_RDONLY | libc::O_DIRECTORY, 0)
                .map_err(mnt_err(format!("reopen {}", dest.display())))?;
            crate::copyup::copy_dir(old.as_fd(), new.as_fd())
                .map_err(mnt_err(format!("tmpcopyup into {}", dest.display())))?;
            if opts.flags.contains(MsFlags::MS_RDONLY) {
                let top = open_in_root(root.as_fd(), dest, libc::O_PATH, 0)
                    .map_err(mnt_err(format!("reopen {}", dest.display())))?;
                mount_on_fd(
                    None,
                    top.as_fd(),
                    None,
                    MsFlags::MS_REMOUNT | opts.flags,
                    data.as_deref(),
                )
                .map_err(mnt_err(format!("remount {} read-only", dest.display())))?;
            }
        }
    }
    if let Some(attr) = &opts.recursive {
        recursive_attrs(root, dest, attr, &m.options().clone().unwrap_or_default())?;
    }
    for p in &opts.propagation {
        let top = open_in_root(root.as_fd(), dest, libc::O_PATH, 0)
            .map_err(mnt_err(format!("reopen {}", dest.display())))?;
        mount_on_fd(None, top.as_fd(), None, *p, None)
            .map_err(mnt_err(format!("set propagation of {}", dest.display())))?;
    }
    Ok(())
}

/// runc's rule for `proc` and `sysfs`: their mount point must be an ordinary directory reached
/// without a symlink (a rootfs whose `/proc` is a symlink is refused, not mounted through it). Each
/// existing component of `dest` is checked without following it; missing ones are created later.
fn ordinary_directory(root: &OwnedFd, dest: &Path, typ: &str) -> R<()> {
    let refuse = |why: String| {
        InitFailure::msg(
            Step::Mount,
            format!(
                "filesystem {typ:?} must be mounted on ordinary directory: {} {why}",
                dest.display()
            ),
        )
    };
    let mut cur = PathBuf::from("/");
    let names: Vec<_> = dest
        .components()
        .filter(|c| {
            !matches!(
                c,
                std::path::Component::RootDir | std::path::Component::CurDir
            )
        })
        .collect();
    for (i, c) in names.iter().enumerate() {
        let std::path::Component::Normal(name) = c else {
            return Err(refuse("contains \"..\"".into()));
        };
        let parent = open_in_root(root.as_fd(), &cur, libc::O_PATH | libc::O_DIRECTORY, 0)
            .map_err(mnt_err(format!("open {}", cur.display())))?;
        let st = match nix::sys::stat::fstatat(
            Some(parent.as_raw_fd()),
            *name,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(mnt_err(format!("stat {}", cur.join(name).display()))(e)),
        };
        cur.push(name);
        match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => {}
            libc::S_IFLNK => {
                return Err(refuse(format!(
                    "resolves through the symlink {} in the rootfs",
                    cur.display()
                )))
            }
            _ if i + 1 == names.len() => return Err(refuse("is not a directory".into())),
            _ => return Err(refuse(format!("{} is not a directory", cur.display()))),
        }
    }
    Ok(())
}

/// Flags of the mount under `fd` that a remount inside a user namespace must keep (the kernel
/// refuses to clear nosuid/nodev/noexec/ro locked by a less privileged namespace).
fn locked_flags(fd: &OwnedFd) -> MsFlags {
    let Ok(st) = nix::sys::statvfs::fstatvfs(fd) else {
        return MsFlags::empty();
    };
    let f = st.flags();
    use nix::sys::statvfs::FsFlags;
    let mut out = MsFlags::empty();
    for (a, b) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(a) {
            out |= b;
        }
    }
    out
}

/// The recursive attributes (`rro`, `rnoatime`, ...) on the mount at `dest` and every mount below
/// it, in one `mount_setattr(AT_RECURSIVE)`.
fn recursive_attrs(
    root: &OwnedFd,
    dest: &Path,
    attr: &moat_sys::mount::MountAttr,
    options: &[String],
) -> R<()> {
    let top = open_in_root(root.as_fd(), dest, libc::O_PATH, 0)
        .map_err(mnt_err(format!("reopen {}", dest.display())))?;
    moat_sys::mount::mount_setattr(top.as_fd(), true, attr).map_err(|e| {
        let why = if e == Errno::ENOSYS {
            " (recursive mount options need mount_setattr, Linux 5.12 or later)"
        } else {
            ""
        };
        InitFailure::new(
            Step::Mount,
            format!(
                "set recursive attributes {options:?} on {}{why}",
                dest.display()
            ),
            e,
        )
    })
}

/// Mount the container's cgroup view at `dest`: cgroup2 in a private cgroup namespace, or bind
/// mounts of the container's own cgroup directories (v1 hierarchies under a tmpfs).
fn mount_cgroup(plan: &RootfsPlan<'_>, root: &OwnedFd, dest: &Path, opts: &ParsedOptions) -> R<()> {
    (plan.placed)()?;
    let ro = opts.flags.contains(MsFlags::MS_RDONLY);
    let base = opts.flags & (MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC);
    let target = mkdir_all_in_root(root.as_fd(), dest, Leaf::Dir, 0o755)
        .map_err(mnt_err(format!("create mount point {}", dest.display())))?;
    match plan.cgroup {
        Some(moat_cgroups::Cgroup::V2 { dir }) => {
            if plan.new_cgroupns {
                let flags = base
                    | if ro {
                        MsFlags::MS_RDONLY
                    } else {
                        MsFlags::empty()
                    };
                mount_on_fd(
                    Some("cgroup2"),
                    target.as_fd(),
                    Some("cgroup2"),
                    flags,
                    None,
                )
                .map_err(mnt_err(format!("mount cgroup2 on {}", dest.display())))?;
            } else {
                bind_ro(root, dir, dest, ro, base)?;
            }
        }
        Some(moat_cgroups::Cgroup::V1 { dirs }) => {
            mount_on_fd(
                Some("tmpfs"),
                target.as_fd(),
                Some("tmpfs"),
                base,
                Some("mode=755"),
            )
            .map_err(mnt_err(format!("mount tmpfs on {}", dest.display())))?;
            for d in dirs {
                // /sys/fs/cgroup/<hierarchy>/<path> -> <dest>/<hierarchy>
                let Some(h) = d
                    .strip_prefix("/sys/fs/cgroup")
                    .ok()
                    .and_then(|r| r.components().next())
                else {
                    continue;
                };
                let sub = dest.join(h.as_os_str());
                mkdir_all_in_root(root.as_fd(), &sub, Leaf::Dir, 0o755)
                    .map_err(mnt_err(format!("create {}", sub.display())))?;
                bind_ro(root, d, &sub, ro, base)?;
            }
            if ro {
                let top = open_in_root(root.as_fd(), dest, libc::O_PATH, 0)
                    .map_err(mnt_err(format!("reopen {}", dest.display())))?;
                mount_on_fd(
                    None,
                    top.as_fd(),
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | base,
                    None,
                )
                .map_err(mnt_err(format!("remount {} read-only", dest.display())))?;
            }
        }
        None => {}
    }
    Ok(())
}

fn bind_ro(root: &OwnedFd, src: &Path, dest: &Path, ro: bool, base: MsFlags) -> R<()> {
    let t = open_in_root(root.as_fd(), dest, libc::O_PATH, 0)
        .map_err(mnt_err(format!("open {}", dest.display())))?;
    mount_on_fd(src.to_str(), t.as_fd(), None, MsFlags::MS_BIND, None).map_err(mnt_err(
        format!("bind {} on {}", src.display(), dest.display()),
    ))?;
    let top = open_in_root(root.as_fd(), dest, libc::O_PATH, 0)
        .map_err(mnt_err(format!("reopen {}", dest.display())))?;
    let flags = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | base
        | if ro {
            MsFlags::MS_RDONLY
        } else {
            MsFlags::empty()
        };
    mount_on_fd(None, top.as_fd(), None, flags, None)
        .map_err(mnt_err(format!("remount {}", dest.display())))
}

fn default_devices(plan: &RootfsPlan<'_>, root: &OwnedFd) -> R<()> {
    let dev = mkdir_all_in_root(root.as_fd(), Path::new("/dev"), Leaf::Dir, 0o755)
        .map_err(|e| InitFailure::new(Step::Device, "create /dev", e))?;
    for (name, major, minor) in DEFAULT_DEVICES {
        make_device(
            plan,
            root,
            &Path::new("/dev").join(name),
            SFlag::S_IFCHR,
            *major,
            *minor,
            0o666,
            Some(0),
            Some(0),
        )?;
    }
    for (target, name) in DEV_SYMLINKS.iter().chain([("pts/ptmx", "ptmx")].iter()) {
        match nix::unistd::symlinkat(*target, Some(dev.as_raw_fd()), *name) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => {
                return Err(InitFailure::new(
                    Step::Device,
                    format!("symlink /dev/{name} -> {target}"),
                    e,
                ))
            }
        }
    }
    Ok(())
}

fn linux_devices(plan: &RootfsPlan<'_>, root: &OwnedFd) -> R<()> {
    let devices = plan
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().clone())
        .unwrap_or_default();
    for d in devices {
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            LinuxDeviceType::A => {
                return Err(InitFailure::msg(
                    Step::Device,
                    format!(
                        "linux.devices {}: type \"a\" is not a device node",
                        d.path().display()
                    ),
                ))
            }
        };
        if !d.path().is_absolute()
            || d.path()
                .components()
                .any(|c| c == std::path::Component::ParentDir)
        {
            return Err(InitFailure::msg(
                Step::Device,
                format!(
                    "linux.devices path {} must be absolute without \"..\"",
                    d.path().display()
                ),
            ));
        }
        let mode = d.file_mode().unwrap_or(0o666) & 0o7777;
        make_device(
            plan,
            root,
            d.path(),
            kind,
            d.major() as u64,
            d.minor() as u64,
            mode,
            d.uid(),
            d.gid(),
        )?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn make_device(
    plan: &RootfsPlan<'_>,
    root: &OwnedFd,
    path: &Path,
    kind: SFlag,
    major: u64,
    minor: u64,
    mode: u32,
    uid: Option<u32>,
    gid: Option<u32>,
) -> R<()> {
    let derr = |what: &str| {
        let what = format!("{what} {}", path.display());
        move |e| InitFailure::new(Step::Device, what, e)
    };
    let parent = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().ok_or_else(|| {
        InitFailure::msg(
            Step::Device,
            format!("device path {} has no name", path.display()),
        )
    })?;
    let pfd = mkdir_all_in_root(root.as_fd(), parent, Leaf::Dir, 0o755)
        .map_err(derr("create parent of"))?;
    match nix::unistd::unlinkat(
        Some(pfd.as_raw_fd()),
        name,
        nix::unistd::UnlinkatFlags::NoRemoveDir,
    ) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(derr("replace")(e)),
    }
    if plan.in_userns && kind != SFlag::S_IFIFO {
        // mknod is not allowed in a user namespace: bind the host's node onto an empty file.
        let host = host_device_path(kind, major, minor).ok_or_else(|| {
            InitFailure::msg(
                Step::Device,
                format!(
                    "no host node for device {major}:{minor} to bind at {}",
                    path.display()
                ),
            )
        })?;
        let t = mkdir_all_in_root(root.as_fd(), path, Leaf::File, 0o000).map_err(derr("create"))?;
        return mount_on_fd(host.to_str(), t.as_fd(), None, MsFlags::MS_BIND, None)
            .map_err(derr("bind host device on"));
    }
    let dev = nix::sys::stat::makedev(major, minor);
    nix::sys::stat::mknodat(
        Some(pfd.as_raw_fd()),
        name,
        kind,
        Mode::from_bits_truncate(mode),
        dev,
    )
    .map_err(derr("mknod"))?;
    // mknod applies the umask: set the exact mode and owner.
    let fd = open_in_root(root.as_fd(), path, libc::O_PATH, 0).map_err(derr("open"))?;
    nix::sys::stat::fchmodat(
        None,
        proc_fd_path(fd.as_fd()).as_str(),
        Mode::from_bits_truncate(mode),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
    .map_err(derr("chmod"))?;
    nix::unistd::fchownat(
        None,
        proc_fd_path(fd.as_fd()).as_str(),
        uid.map(nix::unistd::Uid::from_raw),
        gid.map(nix::unistd::Gid::from_raw),
        nix::fcntl::AtFlags::empty(),
    )
    .map_err(derr("chown"))?;
    Ok(())
}

fn host_device_path(kind: SFlag, major: u64, minor: u64) -> Option<PathBuf> {
    let sub = if kind == SFlag::S_IFBLK {
        "block"
    } else {
        "char"
    };
    std::fs::canonicalize(format!("/sys/dev/{sub}/{major}:{minor}"))
        .ok()
        .and_then(|p| {
            let uevent = std::fs::read_to_string(p.join("uevent")).ok()?;
            uevent
                .lines()
                .find_map(|l| l.strip_prefix("DEVNAME="))
                .map(|n| PathBuf::from("/dev").join(n))
        })
}

/// Switch the root: pivot_root(2), or MS_MOVE + chroot(2) when `no_pivot` (initramfs).
pub fn switch_root(rootfs: &OwnedFd, no_pivot: bool) -> R<()> {
    let perr = |what: &'static str| move |e| InitFailure::new(Step::PivotRoot, what, e);
    let dir = open_dir_from_path_fd(rootfs).map_err(perr("open rootfs"))?;
    nix::unistd::fchdir(dir.as_raw_fd()).map_err(perr("chdir to rootfs"))?;
    if no_pivot {
        mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
            .map_err(perr("move rootfs to /"))?;
        nix::unistd::chroot(".").map_err(perr("chroot"))?;
    } else {
        let old_root = nix::fcntl::open(
            "/",
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map(moat_sys::fd::owned)
        .map_err(perr("open the old root"))?;
        nix::unistd::pivot_root(".", ".").map_err(perr("pivot_root"))?;
        // The old root is now stacked on "/". Work on it through its own descriptor (runc's
        // way): "." still names the new root's mount, and making that a slave would cut a
        // shared rootfs (rootfsPropagation: rshared) off the host's peer groups. Make the old
        // root a slave so the detach does not propagate to the host, then detach it.
        nix::unistd::fchdir(old_root.as_raw_fd()).map_err(perr("chdir to the old root"))?;
        drop(old_root);
        mount(
            None::<&str>,
            ".",
            None::<&str>,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(perr("make old root slave"))?;
        umount2(".", MntFlags::MNT_DETACH).map_err(perr("detach old root"))?;
    }
    nix::unistd::chdir("/").map_err(perr("chdir /"))
}

fn open_dir_from_path_fd(fd: &OwnedFd) -> nix::Result<OwnedFd> {
    nix::fcntl::open(
        proc_fd_path(fd.as_fd()).as_str(),
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map(moat_sys::fd::owned)
}

/// After the root switch: rootfs propagation, masked paths, read-only paths, read-only root.
pub fn finish(spec: &Spec) -> R<()> {
    let linux = spec.linux().as_ref();
    let slash = nix::fcntl::open(
        "/",
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map(moat_sys::fd::owned)
    .map_err(|e| InitFailure::new(Step::Mount, "open /", e))?;
    if let Some(p) = linux
        .and_then(|l| l.rootfs_propagation().as_deref())
        .and_then(crate::mountopts::propagation)
    {
        mount(None::<&str>, "/", None::<&str>, p, None::<&str>)
            .map_err(mnt_err("set rootfsPropagation".into()))?;
    }
    for p in linux
        .and_then(|l| l.masked_paths().clone())
        .unwrap_or_default()
    {
        mask_path(&slash, Path::new(&p))?;
    }
    for p in linux
        .and_then(|l| l.readonly_paths().clone())
        .unwrap_or_default()
    {
        readonly_path(&slash, Path::new(&p))?;
    }
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        let locked = locked_flags(&slash);
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | locked,
            None::<&str>,
        )
        .map_err(mnt_err("remount / read-only".into()))?;
    }
    Ok(())
}

fn mask_path(slash: &OwnedFd, path: &Path) -> R<()> {
    let fd = match open_in_root(slash.as_fd(), path, libc::O_PATH, 0) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => {
            return Err(InitFailure::new(
                Step::MaskPath,
                format!("open {}", path.display()),
                e,
            ))
        }
    };
    let is_dir = nix::sys::stat::fstat(fd.as_raw_fd())
        .map(|s| s.st_mode & libc::S_IFMT == libc::S_IFDIR)
        .unwrap_or(false);
    let r = if is_dir {
        mount_on_fd(
            Some("tmpfs"),
            fd.as_fd(),
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            Some("size=0k"),
        )
    } else {
        mount_on_fd(Some("/dev/null"), fd.as_fd(), None, MsFlags::MS_BIND, None)
    };
    r.map_err(|e| InitFailure::new(Step::MaskPath, format!("mask {}", path.display()), e))
}

fn readonly_path(slash: &OwnedFd, path: &Path) -> R<()> {
    let fd = match open_in_root(slash.as_fd(), path, libc::O_PATH, 0) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => {
            return Err(InitFailure::new(
                Step::ReadonlyPath,
                format!("open {}", path.display()),
                e,
            ))
        }
    };
    let rerr = |what: &str| {
        let what = format!("{what} {}", path.display());
        move |e| InitFailure::new(Step::ReadonlyPath, what, e)
    };
    let p = proc_fd_path(fd.as_fd());
    mount(
        Some(p.as_str()),
        p.as_str(),
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(rerr("bind"))?;
    let top = open_in_root(slash.as_fd(), path, libc::O_PATH, 0).map_err(rerr("reopen"))?;
    let locked = locked_flags(&top);
    mount_on_fd(
        None,
        top.as_fd(),
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC | locked,
        None,
    )
    .map_err(rerr("remount read-only"))
}
