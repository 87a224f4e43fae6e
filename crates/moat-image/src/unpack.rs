//! Safe unpacking of one image layer (a tar stream, uncompressed, gzip or zstd) into an empty
//! directory, in the form overlayfs wants for a lowerdir: whiteouts become 0/0 character devices and
//! opaque directories carry `trusted.overlay.opaque=y`.
//!
//! A layer is hostile input. What this module guarantees: nothing is created, changed or removed
//! outside the destination directory, whatever the archive holds. Paths are cleaned lexically and an
//! entry whose path climbs out (`../../x`) is refused; absolute paths are taken relative to the
//! root; every parent directory is opened one component at a time with `O_NOFOLLOW` through
//! `moat_sys::resolve::open_in_root`, so a symlink in the archive is created as a link but is never
//! written *through* (an entry below one is refused); hard-link targets are resolved the same way;
//! device nodes are skipped unless running as root; xattrs in the `trusted.overlay.` namespace are
//! dropped (they would forge overlay metadata); total uncompressed bytes and entry count are capped.
//!
//! What it must never do: use a path from the archive with `Path::join` and a path-based call.

use std::cell::Cell;
use std::ffi::{OsStr, OsString};
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::rc::Rc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags};
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::error::{ImageError, Result};
use crate::manifest::Compression;

/// Caps against decompression bombs.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most uncompressed bytes one layer may expand to.
    pub max_bytes: u64,
    /// Most tar entries one layer may hold.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 64 << 30,
            max_entries: 4_000_000,
        }
    }
}

/// How a layer is unpacked.
#[derive(Clone, Copy, Debug)]
pub struct UnpackOptions {
    pub limits: Limits,
    /// Apply ownership, create device nodes and whiteouts, set `trusted.`/`security.` xattrs.
    /// Defaults to whether the effective uid is 0 in the initial user namespace.
    pub privileged: bool,
    /// Root of a user namespace (rootless `moat`): ownership is applied through the namespace's
    /// id map (an id it does not map stays the namespace's root, counted in `unmapped`),
    /// whiteouts are 0/0 character devices (which Linux 5.8+ lets anyone create), opaque
    /// directories carry `user.overlay.opaque` (the overlay is mounted with `userxattr`), and
    /// device nodes and `trusted.` xattrs are left out. Defaults to whether the effective uid
    /// is 0 in a user namespace other than the initial one.
    pub userns: bool,
}

/// Whether this process runs in a user namespace other than the initial one.
pub fn in_user_namespace() -> bool {
    std::fs::read_to_string("/proc/self/uid_map").is_ok_and(|m| {
        let f: Vec<&str> = m.split_whitespace().collect();
        f != ["0", "0", "4294967295"]
    })
}

impl Default for UnpackOptions {
    fn default() -> Self {
        let root = rustix::process::geteuid().is_root();
        let userns = root && in_user_namespace();
        UnpackOptions {
            limits: Limits::default(),
            privileged: root && !userns,
            userns,
        }
    }
}

/// What an unpack did.
#[derive(Clone, Debug)]
pub struct UnpackStats {
    /// Digest of the uncompressed tar stream (the layer's diff ID).
    pub diff_id: Digest,
    pub compression: Compression,
    pub entries: u64,
    pub bytes: u64,
    /// Entries left out on purpose (device nodes when unprivileged, aufs metadata, unknown types).
    pub skipped: u64,
    /// Entries whose owner the user namespace does not map (left owned by its root).
    pub unmapped: u64,
}

/// Reads the uncompressed stream, hashing it and counting it against the byte limit.
struct Meter<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    limit: u64,
    over: Rc<Cell<bool>>,
}

impl<R: Read> Read for Meter<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if self.count > self.limit {
            self.over.set(true);
            return Err(io::Error::other("uncompressed size limit exceeded"));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Unpack the layer read from `blob` into the empty directory `dest`. `layer` names the layer in
/// errors (its digest).
pub fn unpack_layer(
    blob: impl Read,
    dest: &Path,
    layer: &str,
    opts: &UnpackOptions,
) -> Result<UnpackStats> {
    let mut buf = BufReader::with_capacity(256 << 10, blob);
    let layer_err = |source| ImageError::Layer {
        digest: layer.into(),
        source,
    };
    let compression = Compression::detect(buf.fill_buf().map_err(layer_err)?);
    let decoded: Box<dyn Read> = match compression {
        Compression::None => Box::new(buf),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buf)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(buf).map_err(layer_err)?)
        }
    };
    let over = Rc::new(Cell::new(false));
    let meter = Meter {
        inner: decoded,
        hasher: Sha256::new(),
        count: 0,
        limit: opts.limits.max_bytes,
        over: over.clone(),
    };
    let root = rustix::fs::open(
        dest,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ImageError::Io {
        op: "open",
        path: dest.into(),
        source: e.into(),
    })?;
    let mut u = Unpacker {
        root,
        layer: layer.into(),
        opts: *opts,
        cache: None,
        dirs: Vec::new(),
        stats: (0, 0),
        unmapped: Cell::new(0),
    };
    let mut archive = tar::Archive::new(meter);
    let res = u.run(&mut archive);
    let bomb = |u: &Unpacker| ImageError::LimitExceeded {
        digest: u.layer.clone(),
        what: "uncompressed size",
        limit: opts.limits.max_bytes,
    };
    match res {
        Err(_) if over.get() => return Err(bomb(&u)),
        Err(e) => return Err(e),
        Ok(()) => {}
    }
    // Hash the end-of-archive padding too: the diff ID covers the whole stream.
    let mut meter = archive.into_inner();
    if let Err(e) = io::copy(&mut meter, &mut io::sink()) {
        return Err(if over.get() { bomb(&u) } else { layer_err(e) });
    }
    u.finish_dirs()?;
    Ok(UnpackStats {
        diff_id: Digest::from_hasher(meter.hasher),
        compression,
        entries: u.stats.0,
        bytes: meter.count,
        skipped: u.stats.1,
        unmapped: u.unmapped.get(),
    })
}

/// Clean a path from the archive into its components: `.` and empty components go, `..` pops one,
/// a leading `/` is ignored (absolute paths are relative to the root). `None` when `..` would climb
/// above the root.
pub fn clean_path(raw: &[u8]) -> Option<Vec<OsString>> {
    let mut out: Vec<OsString> = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop()?;
            }
            n => out.push(OsStr::from_bytes(n).to_owned()),
        }
    }
    Some(out)
}

/// A directory whose mode and times are applied after everything inside it is written.
struct DirMeta {
    comps: Vec<OsString>,
    mode: u32,
    mtime: u64,
}

struct Unpacker {
    root: OwnedFd,
    layer: String,
    opts: UnpackOptions,
    /// The last parent directory opened, by its components.
    cache: Option<(Vec<OsString>, Rc<OwnedFd>)>,
    dirs: Vec<DirMeta>,
    /// (entries, skipped)
    stats: (u64, u64),
    /// Entries whose owner the user namespace does not map (`UnpackOptions::userns`).
    unmapped: Cell<u64>,
}

impl Unpacker {
    fn unsafe_entry(&self, path: &[u8], reason: impl Into<String>) -> ImageError {
        ImageError::UnsafeEntry {
            digest: self.layer.clone(),
            path: String::from_utf8_lossy(path).into_owned(),
            reason: reason.into(),
        }
    }

    fn io_err(&self, path: &[u8], e: impl Into<io::Error>) -> ImageError {
        let e: io::Error = e.into();
        ImageError::Layer {
            digest: self.layer.clone(),
            source: io::Error::new(e.kind(), format!("{}: {e}", String::from_utf8_lossy(path))),
        }
    }

    fn run<R: Read>(&mut self, archive: &mut tar::Archive<R>) -> Result<()> {
        let layer_err = |source| ImageError::Layer {
            digest: self.layer.clone(),
            source,
        };
        for entry in archive.entries().map_err(layer_err)? {
            let mut entry = entry.map_err(|source| ImageError::Layer {
                digest: self.layer.clone(),
                source,
            })?;
            self.stats.0 += 1;
            if self.stats.0 > self.opts.limits.max_entries {
                return Err(ImageError::LimitExceeded {
                    digest: self.layer.clone(),
                    what: "entry count",
                    limit: self.opts.limits.max_entries,
                });
            }
            self.entry(&mut entry)?;
        }
        Ok(())
    }

    /// Open the directory `comps` below the root, creating missing components (mode 0755) when
    /// `create`, never following a symlink.
    fn open_dir(&mut self, comps: &[OsString], create: bool, raw: &[u8]) -> Result<Rc<OwnedFd>> {
        if let Some((c, fd)) = &self.cache {
            if c.as_slice() == comps {
                return Ok(fd.clone());
            }
        }
        let mut cur: Option<OwnedFd> = None;
        for name in comps {
            let dir = cur.as_ref().map(|f| f.as_fd()).unwrap_or(self.root.as_fd());
            let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
            let fd = match moat_sys::resolve::open_in_root(dir, Path::new(name), flags, 0) {
                Ok(fd) => fd,
                Err(nix::errno::Errno::ENOENT) if create => {
                    match rustix::fs::mkdirat(dir, name.as_os_str(), Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => return Err(self.io_err(raw, e)),
                    }
                    moat_sys::resolve::open_in_root(dir, Path::new(name), flags, 0)
                        .map_err(|e| self.io_err(raw, io::Error::from(e)))?
                }
                Err(nix::errno::Errno::ENOENT) => {
                    return Err(
                        self.unsafe_entry(raw, format!("directory {name:?} is not in this layer"))
                    )
                }
                Err(nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR) => {
                    return Err(self.unsafe_entry(
                        raw,
                        format!("parent {:?} is a symlink or not a directory", name),
                    ))
                }
                Err(e) => return Err(self.io_err(raw, io::Error::from(e))),
            };
            cur = Some(fd);
        }
        let fd = match cur {
            Some(fd) => fd,
            None => self.root.try_clone().map_err(|e| self.io_err(raw, e))?,
        };
        let fd = Rc::new(fd);
        self.cache = Some((comps.to_vec(), fd.clone()));
        Ok(fd)
    }

    /// Remove whatever is at `parent/name`, except a directory when `keep_dir`. Returns whether a
    /// directory is (still) there.
    fn clear(
        &self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        keep_dir: bool,
        raw: &[u8],
    ) -> Result<bool> {
        let st = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => return Ok(false),
            Err(e) => return Err(self.io_err(raw, e)),
        };
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            if keep_dir {
                return Ok(true);
            }
            // The magic link pins the parent we resolved; remove_dir_all never follows a symlink.
            let p = Path::new(&moat_sys::resolve::proc_fd_path(parent)).join(name);
            std::fs::remove_dir_all(&p).map_err(|e| self.io_err(raw, e))?;
        } else {
            rustix::fs::unlinkat(parent, name, AtFlags::empty())
                .map_err(|e| self.io_err(raw, e))?;
        }
        Ok(false)
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let raw = entry.path_bytes().into_owned();
        let Some(comps) = clean_path(&raw) else {
            return Err(self.unsafe_entry(&raw, "path climbs out of the layer root"));
        };
        // A cached parent at or below this path may be about to be replaced.
        if self
            .cache
            .as_ref()
            .is_some_and(|(c, _)| c.starts_with(&comps))
        {
            self.cache = None;
        }
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().map_err(|e| self.io_err(&raw, e))? & 0o7777;
        let mtime = entry.header().mtime().unwrap_or(0);
        let Some((name, parent_comps)) = comps.split_last() else {
            // The root itself ("./"): keep its mode and times.
            if kind.is_dir() {
                self.dirs.push(DirMeta {
                    comps: vec![],
                    mode,
                    mtime,
                });
            }
            return Ok(());
        };
        let name = name.clone();
        let nb = name.as_bytes();
        if let Some(target) = nb.strip_prefix(b".wh.") {
            let parent = self.open_dir(parent_comps, true, &raw)?;
            return self.whiteout(parent.as_fd(), target, &raw);
        }
        let (uid, gid, xattrs) = self.pax(entry, &raw)?;
        let parent = self.open_dir(parent_comps, true, &raw)?;
        let p = parent.as_fd();
        match kind {
            tar::EntryType::Directory => {
                if !self.clear(p, &name, true, &raw)? {
                    rustix::fs::mkdirat(p, name.as_os_str(), Mode::from_raw_mode(0o755))
                        .map_err(|e| self.io_err(&raw, e))?;
                }
                self.dirs.push(DirMeta {
                    comps: comps.clone(),
                    mode,
                    mtime,
                });
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.clear(p, &name, false, &raw)?;
                let f = rustix::fs::openat(
                    p,
                    name.as_os_str(),
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| self.io_err(&raw, e))?;
                let mut file = std::fs::File::from(f);
                io::copy(entry, &mut file).map_err(|e| self.io_err(&raw, e))?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.unsafe_entry(&raw, "symlink without a target"))?
                    .into_owned();
                self.clear(p, &name, false, &raw)?;
                rustix::fs::symlinkat(OsStr::from_bytes(&target), p, name.as_os_str())
                    .map_err(|e| self.io_err(&raw, e))?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.unsafe_entry(&raw, "hard link without a target"))?
                    .into_owned();
                let Some(tcomps) = clean_path(&target) else {
                    return Err(
                        self.unsafe_entry(&raw, "hard link target climbs out of the layer root")
                    );
                };
                let Some((tname, tparent)) = tcomps.split_last() else {
                    return Err(self.unsafe_entry(&raw, "hard link to the root"));
                };
                let tdir = self.open_dir(tparent, false, &raw)?;
                // Re-open our parent: the cache now holds the target's.
                let parent = self.open_dir(parent_comps, true, &raw)?;
                if tparent == parent_comps && tname == &name {
                    return Ok(());
                }
                self.clear(parent.as_fd(), &name, false, &raw)?;
                match rustix::fs::linkat(
                    tdir.as_fd(),
                    tname.as_os_str(),
                    parent.as_fd(),
                    name.as_os_str(),
                    AtFlags::empty(),
                ) {
                    Ok(()) => {}
                    Err(rustix::io::Errno::NOENT) => {
                        return Err(self.unsafe_entry(&raw, "hard link target is not in this layer"))
                    }
                    Err(e) => return Err(self.io_err(&raw, e)),
                }
                return Ok(()); // metadata belongs to the target
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let ft = match kind {
                    tar::EntryType::Char => FileType::CharacterDevice,
                    tar::EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                if ft != FileType::Fifo && (!self.opts.privileged || self.opts.userns) {
                    self.stats.1 += 1;
                    return Ok(());
                }
                let major = entry.header().device_major().ok().flatten().unwrap_or(0);
                let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
                self.clear(p, &name, false, &raw)?;
                rustix::fs::mknodat(
                    p,
                    name.as_os_str(),
                    ft,
                    Mode::from_raw_mode(0o600),
                    rustix::fs::makedev(major, minor),
                )
                .map_err(|e| self.io_err(&raw, e))?;
            }
            _ => {
                self.stats.1 += 1;
                return Ok(());
            }
        }
        self.metadata(p, &name, kind, mode, mtime, uid, gid, &xattrs, &raw)
    }

    /// Ownership (PAX `uid`/`gid` over the header's) and xattrs (PAX `SCHILY.xattr.*`).
    #[allow(clippy::type_complexity)]
    fn pax<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        raw: &[u8],
    ) -> Result<(u64, u64, Vec<(OsString, Vec<u8>)>)> {
        let h = entry.header();
        let mut uid = h.uid().unwrap_or(0);
        let mut gid = h.gid().unwrap_or(0);
        let mut xattrs = Vec::new();
        if let Some(exts) = entry.pax_extensions().map_err(|e| self.io_err(raw, e))? {
            for ext in exts {
                let ext = ext.map_err(|e| self.io_err(raw, e))?;
                let key = ext.key_bytes();
                let num = || {
                    std::str::from_utf8(ext.value_bytes())
                        .ok()
                        .and_then(|v| v.parse().ok())
                };
                if key == b"uid" {
                    uid = num().unwrap_or(uid);
                } else if key == b"gid" {
                    gid = num().unwrap_or(gid);
                } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    xattrs.push((
                        OsStr::from_bytes(name).to_owned(),
                        ext.value_bytes().to_vec(),
                    ));
                }
            }
        }
        Ok((uid, gid, xattrs))
    }

    #[allow(clippy::too_many_arguments)]
    fn metadata(
        &self,
        p: BorrowedFd<'_>,
        name: &OsStr,
        kind: tar::EntryType,
        mode: u32,
        mtime: u64,
        uid: u64,
        gid: u64,
        xattrs: &[(OsString, Vec<u8>)],
        raw: &[u8],
    ) -> Result<()> {
        let e = |e: rustix::io::Errno| self.io_err(raw, e);
        if self.opts.privileged || self.opts.userns {
            let (u, g) = (
                u32::try_from(uid).unwrap_or(u32::MAX - 1),
                u32::try_from(gid).unwrap_or(u32::MAX - 1),
            );
            match rustix::fs::chownat(
                p,
                name,
                Some(rustix::fs::Uid::from_raw(u)),
                Some(rustix::fs::Gid::from_raw(g)),
                AtFlags::SYMLINK_NOFOLLOW,
            ) {
                Ok(()) => {}
                // An id the user namespace does not map: the entry stays the namespace root's.
                Err(rustix::io::Errno::INVAL) if self.opts.userns => {
                    self.unmapped.set(self.unmapped.get() + 1);
                }
                Err(err) => return Err(e(err)),
            }
        }
        if !xattrs.is_empty() {
            // lsetxattr through the magic link of the parent: acts on exactly `parent/name`,
            // never following it.
            let path = Path::new(&moat_sys::resolve::proc_fd_path(p)).join(name);
            for (k, v) in xattrs {
                if !self.xattr_allowed(k.as_bytes()) {
                    continue;
                }
                match rustix::fs::lsetxattr(&path, k.as_os_str(), v, XattrFlags::empty()) {
                    Ok(()) | Err(rustix::io::Errno::OPNOTSUPP) => {}
                    Err(err) => return Err(e(err)),
                }
            }
        }
        if kind.is_dir() {
            return Ok(());
        }
        if kind != tar::EntryType::Symlink {
            // After chown, which clears set-id bits. Not a symlink (we just made it), so following
            // the name is following nothing.
            rustix::fs::chmodat(p, name, Mode::from_raw_mode(mode), AtFlags::empty()).map_err(e)?;
        }
        let ts = Timespec {
            tv_sec: mtime as i64,
            tv_nsec: 0,
        };
        rustix::fs::utimensat(
            p,
            name,
            &Timestamps {
                last_access: ts,
                last_modification: ts,
            },
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(e)
    }

    fn xattr_allowed(&self, name: &[u8]) -> bool {
        if name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.") {
            return false; // would forge whiteouts, opaque dirs or redirects in the overlay
        }
        if self.opts.userns {
            // Root of a user namespace may set `security.capability` (stored as a namespaced
            // v3 capability), never `trusted.` nor the LSMs' labels.
            return name.starts_with(b"user.") || name == b"security.capability";
        }
        name.starts_with(b"user.") || self.opts.privileged
    }

    /// `.wh.NAME` hides NAME of the layers below; `.wh..wh..opq` makes the parent opaque.
    fn whiteout(&mut self, parent: BorrowedFd<'_>, target: &[u8], raw: &[u8]) -> Result<()> {
        if !self.opts.privileged && !self.opts.userns {
            return Err(self.unsafe_entry(
                raw,
                "whiteouts need root (overlay whiteouts are 0/0 devices)",
            ));
        }
        if target == b".wh..opq" {
            return rustix::fs::fsetxattr(
                parent,
                crate::snapshot::opaque_xattr(self.opts.userns),
                b"y",
                XattrFlags::empty(),
            )
            .map_err(|e| self.io_err(raw, e));
        }
        if target.starts_with(b".wh.") {
            self.stats.1 += 1; // other aufs metadata
            return Ok(());
        }
        if target.is_empty() || target == b"." || target == b".." {
            return Err(self.unsafe_entry(raw, "whiteout of nothing"));
        }
        let name = OsStr::from_bytes(target);
        self.clear(parent, name, false, raw)?;
        rustix::fs::mknodat(
            parent,
            name,
            FileType::CharacterDevice,
            Mode::empty(),
            rustix::fs::makedev(0, 0),
        )
        .map_err(|e| self.io_err(raw, e))
    }

    /// Apply directory modes and times, deepest first, once their contents are written.
    fn finish_dirs(&mut self) -> Result<()> {
        self.cache = None;
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.comps.len()));
        for d in dirs {
            let raw = d.comps.join(OsStr::new("/"));
            let raw = raw.as_bytes();
            let fd = match self.open_dir(&d.comps, false, raw) {
                Ok(fd) => fd,
                Err(ImageError::UnsafeEntry { .. }) => continue, // replaced by a non-directory later
                Err(e) => return Err(e),
            };
            let e = |e: rustix::io::Errno| self.io_err(raw, e);
            rustix::fs::fchmod(fd.as_fd(), Mode::from_raw_mode(d.mode)).map_err(e)?;
            let ts = Timespec {
                tv_sec: d.mtime as i64,
                tv_nsec: 0,
            };
            rustix::fs::futimens(
                fd.as_fd(),
                &Timestamps {
                    last_access: ts,
                    last_modification: ts,
                },
            )
            .map_err(e)?;
            self.cache = None;
        }
        Ok(())
    }
}
