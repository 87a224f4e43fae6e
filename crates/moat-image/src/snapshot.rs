//! Snapshots and container root filesystems. Each layer is unpacked once, into
//! `snapshots/<chainID>/fs`, and shared by every image that has the same stack of layers below it;
//! a container's rootfs is an overlay mount of those snapshots (top layer first) as lowerdirs with
//! a per-container upperdir and workdir under `containers/<id>/`.
//!
//! A snapshot is unpacked in `tmp/` and renamed into place when complete, so a snapshot directory
//! that exists is whole; when two pulls unpack the same layer at once, the first rename wins and
//! the other copy is discarded.
//!
//! As root of a user namespace (rootless `moat`) the overlay is mounted with `userxattr` (opaque
//! directories are marked `user.overlay.opaque`), which Linux 5.11+ allows; where the kernel
//! refuses it, the layers are copied into a plain directory instead ([`Rootfs::copied`]).

use std::fs;
use std::path::{Path, PathBuf};

use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, UnmountFlags};

use crate::digest::Digest;
use crate::error::{ImageError, Result};
use crate::progress::Progress;
use crate::store::{Store, StoredImage};
use crate::unpack::{unpack_layer, UnpackOptions};

/// Unpack every layer of `img` that has no snapshot yet (layers in parallel, two at a time).
/// Returns the chain IDs, bottom first.
pub fn ensure_snapshots(
    store: &Store,
    img: &StoredImage,
    opts: &UnpackOptions,
    progress: &dyn Progress,
) -> Result<Vec<Digest>> {
    let chains = img.chain_ids();
    let jobs: Vec<usize> = (0..chains.len()).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 4);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers.min(jobs.len().max(1)))
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= jobs.len() {
                            return Ok(());
                        }
                        let layer = &img.manifest.layers[i].digest;
                        let cached =
                            unpack_snapshot(store, layer, &img.diff_ids[i], &chains[i], opts)?;
                        progress.unpacked(layer, &chains[i], cached);
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(ImageError::Config("unpack thread panicked".into())))
            })
            .collect::<Result<Vec<()>>>()
    })?;
    Ok(chains)
}

/// Unpack the blob `layer` as the snapshot `chain`, checking its diff ID. Returns whether the
/// snapshot was already there.
pub fn unpack_snapshot(
    store: &Store,
    layer: &Digest,
    diff_id: &Digest,
    chain: &Digest,
    opts: &UnpackOptions,
) -> Result<bool> {
    let dest = store.snapshot_dir(chain);
    if dest.is_dir() {
        return Ok(true);
    }
    let tmp = tempfile::Builder::new()
        .prefix(&format!("snap-{}-", &chain.hex()[..12]))
        .tempdir_in(store.tmp_dir())
        .map_err(ImageError::io(
            "create temporary directory in",
            store.tmp_dir(),
        ))?;
    let fsdir = tmp.path().join("fs");
    fs::create_dir(&fsdir).map_err(ImageError::io("mkdir", &fsdir))?;
    let blob = store.blob_path(layer);
    let f = fs::File::open(&blob).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ImageError::MissingBlob(layer.to_string()),
        _ => ImageError::Io {
            op: "open",
            path: blob.clone(),
            source: e,
        },
    })?;
    let stats = unpack_layer(f, &fsdir, layer.as_str(), opts)?;
    if &stats.diff_id != diff_id {
        return Err(ImageError::DiffIdMismatch {
            digest: layer.to_string(),
            expected: diff_id.to_string(),
            actual: stats.diff_id.to_string(),
        });
    }
    fs::write(tmp.path().join("diffid"), diff_id.as_str())
        .map_err(ImageError::io("write", tmp.path()))?;
    match fs::rename(tmp.path(), &dest) {
        Ok(()) => {
            let _ = tmp.keep();
            crate::store::fsync_dir(dest.parent().unwrap_or(store.root()))?;
            Ok(false)
        }
        // Someone else finished the same snapshot first: keep theirs, ours goes with `tmp`.
        Err(_) if dest.is_dir() => Ok(true),
        Err(e) => Err(ImageError::Io {
            op: "rename",
            path: dest,
            source: e,
        }),
    }
}

/// The xattr marking an opaque directory: `trusted.overlay.opaque`, or `user.overlay.opaque`
/// for an overlay mounted in a user namespace (with `userxattr`).
pub fn opaque_xattr(userns: bool) -> &'static str {
    if userns {
        "user.overlay.opaque"
    } else {
        "trusted.overlay.opaque"
    }
}

/// A mounted container root filesystem.
#[derive(Debug)]
pub struct Rootfs {
    /// Where the overlay is mounted.
    pub path: PathBuf,
    /// `containers/<id>`: upper, work, rootfs and the chain IDs in use.
    pub dir: PathBuf,
    /// The layers were copied into `path` (a plain directory): the kernel refused an overlay
    /// in this user namespace (before Linux 5.11), or `MOAT_ROOTFS_COPY=1` asked for it.
    pub copied: bool,
}

impl Rootfs {
    /// Unmount the overlay (lazily, so a busy mount still goes away when released).
    pub fn unmount(&self) -> Result<()> {
        match rustix::mount::unmount(&self.path, UnmountFlags::DETACH) {
            // INVAL: not mounted; NOENT: never made (a `moat run` killed before it)
            Ok(()) | Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(ImageError::Io {
                op: "unmount",
                path: self.path.clone(),
                source: e.into(),
            }),
        }
    }

    /// Unmount and delete the container's upper layer and bookkeeping.
    pub fn remove(self) -> Result<()> {
        self.unmount()?;
        fs::remove_dir_all(&self.dir).map_err(ImageError::io("remove", &self.dir))
    }
}

fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ImageError::Config(format!("invalid container id {id:?}")))
    }
}

/// Prepare the rootfs of container `id` from image `name`: unpack missing snapshots, create
/// `containers/<id>/{upper,work,rootfs}` (the directory may exist already, holding the caller's
/// record of the container; those three may not), and mount the overlay on `rootfs`. Must run
/// as root.
pub fn prepare_rootfs(store: &Store, name: &str, id: &str, opts: &UnpackOptions) -> Result<Rootfs> {
    check_id(id)?;
    let _lock = store.shared_lock()?;
    let img = store.image(name)?;
    let chains = ensure_snapshots(store, &img, opts, &crate::progress::NoProgress)?;
    let dir = store.root().join("containers").join(id);
    let (upper, work, rootfs) = (dir.join("upper"), dir.join("work"), dir.join("rootfs"));
    let made_dir = match fs::create_dir(&dir) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(ImageError::io("create", &dir)(e)),
    };
    if let Some(d) = [&upper, &work, &rootfs].into_iter().find(|d| d.exists()) {
        return Err(ImageError::io("create", d)(
            std::io::ErrorKind::AlreadyExists.into(),
        ));
    }
    let res = (|| {
        for d in [&upper, &work, &rootfs] {
            fs::create_dir(d).map_err(ImageError::io("mkdir", d))?;
        }
        let list: String = chains.iter().map(|c| format!("{c}\n")).collect();
        fs::write(dir.join("chains"), list).map_err(ImageError::io("write", dir.join("chains")))?;
        let mut lowers: Vec<PathBuf> = chains
            .iter()
            .rev()
            .map(|c| store.snapshot_dir(c).join("fs"))
            .collect();
        if lowers.is_empty() {
            let empty = dir.join("empty");
            fs::create_dir(&empty).map_err(ImageError::io("mkdir", &empty))?;
            lowers.push(empty);
        }
        // `opts` says whether this is a user namespace's root: the same answer chose the
        // opaque-directory xattr at unpack time, so the overlay's `userxattr` agrees with it.
        let forced = opts.userns && std::env::var_os("MOAT_ROOTFS_COPY").is_some_and(|v| v == "1");
        if !forced {
            match mount_overlay(&lowers, &upper, &work, &rootfs, opts.userns) {
                Ok(()) => return Ok(false),
                // An overlay in a user namespace needs Linux 5.11.
                Err(e) if opts.userns && overlay_refused(&e) => {}
                Err(e) => return Err(e),
            }
        }
        for l in lowers.iter().rev() {
            crate::flatten::apply_layer(l, &rootfs)?;
        }
        Ok(true)
    })();
    match res {
        Ok(copied) => Ok(Rootfs {
            path: rootfs,
            dir,
            copied,
        }),
        Err(e) => {
            if made_dir {
                let _ = fs::remove_dir_all(&dir);
            } else {
                let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
                for d in [&upper, &work, &rootfs, &dir.join("empty")] {
                    let _ = fs::remove_dir_all(d);
                }
                let _ = fs::remove_file(dir.join("chains"));
            }
            Err(e)
        }
    }
}

/// Whether a failed overlay mount is the kernel refusing overlay in a user namespace.
fn overlay_refused(e: &ImageError) -> bool {
    let errno = match e {
        ImageError::Io { source, .. } => source.raw_os_error().unwrap_or(0),
        ImageError::Sys { errno, .. } => *errno as i32,
        _ => 0,
    };
    matches!(errno, libc::EPERM | libc::EINVAL | libc::ENODEV)
}

/// The rootfs of container `id` as prepared earlier (to unmount or remove it).
pub fn rootfs_of(store: &Store, id: &str) -> Result<Rootfs> {
    check_id(id)?;
    let dir = store.root().join("containers").join(id);
    if !dir.is_dir() {
        return Err(ImageError::Config(format!(
            "no rootfs prepared for container {id}"
        )));
    }
    Ok(Rootfs {
        path: dir.join("rootfs"),
        dir,
        copied: false,
    })
}

/// Mount an overlay with `lowers` (top first). Uses the new mount API with one `lowerdir+` per
/// layer (no page-size limit on the option string, Linux 6.8+), and the classic `mount(2)` with a
/// colon-separated `lowerdir=` on older kernels.
/// `userxattr`: the overlay of a user namespace's root (its opaque markers are `user.` xattrs).
pub fn mount_overlay(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
    userxattr: bool,
) -> Result<()> {
    let new_api = || -> rustix::io::Result<()> {
        let fs_fd = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)?;
        for l in lowers {
            rustix::mount::fsconfig_set_string(&fs_fd, "lowerdir+", l.as_path())?;
        }
        rustix::mount::fsconfig_set_string(&fs_fd, "upperdir", upper)?;
        rustix::mount::fsconfig_set_string(&fs_fd, "workdir", work)?;
        if userxattr {
            rustix::mount::fsconfig_set_flag(&fs_fd, "userxattr")?;
        }
        rustix::mount::fsconfig_create(&fs_fd)?;
        let mnt = rustix::mount::fsmount(
            &fs_fd,
            FsMountFlags::FSMOUNT_CLOEXEC,
            MountAttrFlags::empty(),
        )?;
        rustix::mount::move_mount(
            &mnt,
            "",
            rustix::fs::CWD,
            target,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    match new_api() {
        Ok(()) => return Ok(()),
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {}
        Err(err) => {
            return Err(ImageError::Io {
                op: "mount overlay on",
                path: target.into(),
                source: err.into(),
            })
        }
    }
    let join = |p: &Path| p.display().to_string();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}{}",
        lowers.iter().map(|p| join(p)).collect::<Vec<_>>().join(":"),
        join(upper),
        join(work),
        if userxattr { ",userxattr" } else { "" }
    );
    nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(ImageError::sys("mount overlay on", target))
}
