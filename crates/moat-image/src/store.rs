//! The content-addressed store under one root directory (default `/var/lib/moat`):
//!
//! ```text
//! blobs/sha256/<hex>      every manifest, config and layer blob, named by its digest
//! tmp/                    blobs and snapshots being written (same filesystem, so rename is atomic)
//! snapshots/<chain>/fs    one unpacked layer, named by its chain ID, an overlay lowerdir
//! containers/<id>/        upper/, work/, rootfs/ and the chain IDs a container uses
//! refs.json               image name -> manifest digest
//! ```
//!
//! A blob becomes visible only by `rename(2)` of a temporary file that was fsync'd and whose digest
//! and size were checked, so no reader ever sees half a blob; two writers of the same blob both
//! succeed and leave one copy. `refs.json` is rewritten whole (temp file + rename) under an
//! exclusive `flock` of `refs.lock`. Pulls, imports and mounts hold a shared lock of `store.lock`
//! and garbage collection an exclusive one, so GC never deletes what a pull is about to reference.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::digest::{chain_ids, Digest};
use crate::error::{ImageError, Result};
use crate::manifest::{Document, Manifest, MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES};

/// Default root of the store.
pub const DEFAULT_ROOT: &str = "/var/lib/moat";

/// An image store rooted at a directory.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

/// A held `flock`; released on drop.
pub struct StoreLock(#[allow(dead_code)] Flock<File>);

/// One tagged image as listed.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ImageSummary {
    pub name: String,
    pub digest: Digest,
    /// Sum of the compressed layer sizes.
    pub size: u64,
}

/// An image read back from the store.
#[derive(Clone, Debug)]
pub struct StoredImage {
    pub manifest_digest: Digest,
    pub manifest: Manifest,
    /// The config JSON as stored.
    pub config_raw: Vec<u8>,
    pub config: oci_spec::image::ImageConfiguration,
    /// Uncompressed digests of the layers, bottom first.
    pub diff_ids: Vec<Digest>,
}

impl StoredImage {
    /// Chain IDs of the layers, bottom first (the names of their snapshots).
    pub fn chain_ids(&self) -> Vec<Digest> {
        chain_ids(&self.diff_ids)
    }
}

/// What garbage collection removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub blobs_removed: usize,
    pub snapshots_removed: usize,
    pub bytes_freed: u64,
}

/// A blob being written: a temporary file in `tmp/`, hashed as it is written.
pub struct BlobWriter {
    file: tempfile::NamedTempFile,
    hasher: Sha256,
    written: u64,
    expected: Digest,
    size: Option<u64>,
    final_path: PathBuf,
}

impl BlobWriter {
    /// Append `buf`; refuses to grow past the expected size.
    pub fn write(&mut self, buf: &[u8]) -> Result<()> {
        self.written += buf.len() as u64;
        if let Some(size) = self.size {
            if self.written > size {
                return Err(ImageError::SizeMismatch {
                    digest: self.expected.to_string(),
                    expected: size,
                    actual: self.written,
                });
            }
        }
        self.hasher.update(buf);
        self.file
            .write_all(buf)
            .map_err(ImageError::io("write", self.file.path()))
    }

    /// Bytes written so far (the offset to resume a download at).
    pub fn len(&self) -> u64 {
        self.written
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.written == 0
    }

    /// Drop what was written and start again (a server that ignored a Range request).
    pub fn restart(&mut self) -> Result<()> {
        let path = self.file.path().to_owned();
        self.file
            .as_file_mut()
            .set_len(0)
            .map_err(ImageError::io("truncate", &path))?;
        use std::io::Seek;
        self.file
            .seek(std::io::SeekFrom::Start(0))
            .map_err(ImageError::io("seek", &path))?;
        self.hasher = Sha256::new();
        self.written = 0;
        Ok(())
    }

    /// Verify size and digest, fsync, and rename into `blobs/`. On a mismatch the temporary file
    /// is removed and nothing is committed.
    pub fn commit(self) -> Result<Digest> {
        let actual = Digest::from_hasher(self.hasher);
        if let Some(size) = self.size {
            if self.written != size {
                return Err(ImageError::SizeMismatch {
                    digest: self.expected.to_string(),
                    expected: size,
                    actual: self.written,
                });
            }
        }
        if actual != self.expected {
            return Err(ImageError::DigestMismatch {
                digest: self.expected.to_string(),
                actual: actual.to_string(),
            });
        }
        let tmp = self.file.path().to_owned();
        let f = self.file.as_file();
        f.sync_all().map_err(ImageError::io("fsync", &tmp))?;
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(fs::Permissions::from_mode(0o644))
            .map_err(ImageError::io("chmod", &tmp))?;
        self.file
            .persist(&self.final_path)
            .map_err(|e| ImageError::Io {
                op: "rename",
                path: self.final_path.clone(),
                source: e.error,
            })?;
        if let Some(dir) = self.final_path.parent() {
            fsync_dir(dir)?;
        }
        Ok(actual)
    }
}

pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(ImageError::io("fsync", dir))
}

impl Store {
    /// Open (creating if needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let root = root.into();
        for d in ["blobs/sha256", "tmp", "snapshots", "containers"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(ImageError::io("mkdir", &p))?;
        }
        Ok(Store { root })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob `d` lives (whether or not it is there).
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    /// Whether the blob `d` is committed.
    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// The temporary directory, on the store's filesystem.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Directory of the snapshot with chain ID `chain` (its `fs/` is the lowerdir).
    pub fn snapshot_dir(&self, chain: &Digest) -> PathBuf {
        self.root.join("snapshots").join(chain.hex())
    }

    /// Start writing the blob `expected` (of `size` bytes, when known).
    pub fn blob_writer(&self, expected: &Digest, size: Option<u64>) -> Result<BlobWriter> {
        let tmp = self.tmp_dir();
        let file = tempfile::Builder::new()
            .prefix(&format!("blob-{}-", &expected.hex()[..12]))
            .tempfile_in(&tmp)
            .map_err(ImageError::io("create temporary file in", &tmp))?;
        Ok(BlobWriter {
            file,
            hasher: Sha256::new(),
            written: 0,
            expected: expected.clone(),
            size,
            final_path: self.blob_path(expected),
        })
    }

    /// Store `data`, verifying it against `expected` when given. Returns its digest.
    pub fn put_blob(&self, data: &[u8], expected: Option<&Digest>) -> Result<Digest> {
        let d = match expected {
            Some(d) => d.clone(),
            None => Digest::of(data),
        };
        if self.has_blob(&d) && expected.is_none() {
            return Ok(d);
        }
        let mut w = self.blob_writer(&d, Some(data.len() as u64))?;
        w.write(data)?;
        w.commit()
    }

    /// Read a small blob (manifest, config) whole, checking its digest again on the way in.
    pub fn read_blob(&self, d: &Digest, max: u64) -> Result<Vec<u8>> {
        let p = self.blob_path(d);
        let f = File::open(&p).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ImageError::MissingBlob(d.to_string()),
            _ => ImageError::Io {
                op: "open",
                path: p.clone(),
                source: e,
            },
        })?;
        let mut buf = Vec::new();
        f.take(max + 1)
            .read_to_end(&mut buf)
            .map_err(ImageError::io("read", &p))?;
        if buf.len() as u64 > max {
            return Err(ImageError::BadManifest {
                what: d.to_string(),
                reason: format!("larger than the limit of {max} bytes"),
            });
        }
        let actual = Digest::of(&buf);
        if &actual != d {
            return Err(ImageError::DigestMismatch {
                digest: d.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(buf)
    }

    fn lock(&self, file: &str, arg: FlockArg) -> Result<StoreLock> {
        let p = self.root.join(file);
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(ImageError::io("open", &p))?;
        Flock::lock(f, arg)
            .map(StoreLock)
            .map_err(|(_, e)| ImageError::Sys {
                op: "flock",
                path: p,
                errno: e,
            })
    }

    /// A shared lock on the store: held while pulling, importing or mounting, it keeps GC out.
    pub fn shared_lock(&self) -> Result<StoreLock> {
        self.lock("store.lock", FlockArg::LockShared)
    }

    fn read_refs(&self) -> Result<BTreeMap<String, Digest>> {
        let p = self.root.join("refs.json");
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(ImageError::json(p.display().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(ImageError::Io {
                op: "read",
                path: p,
                source: e,
            }),
        }
    }

    /// Change the refs under the refs lock and rewrite the file atomically.
    fn update_refs<T>(
        &self,
        f: impl FnOnce(&mut BTreeMap<String, Digest>) -> Result<T>,
    ) -> Result<T> {
        let _l = self.lock("refs.lock", FlockArg::LockExclusive)?;
        let mut refs = self.read_refs()?;
        let out = f(&mut refs)?;
        let p = self.root.join("refs.json");
        let mut tmp = tempfile::Builder::new()
            .prefix("refs-")
            .tempfile_in(self.tmp_dir())
            .map_err(ImageError::io("create temporary file in", self.tmp_dir()))?;
        let body = serde_json::to_vec_pretty(&refs).map_err(ImageError::json("refs"))?;
        tmp.write_all(&body)
            .map_err(ImageError::io("write", tmp.path()))?;
        tmp.as_file()
            .sync_all()
            .map_err(ImageError::io("fsync", tmp.path()))?;
        tmp.persist(&p).map_err(|e| ImageError::Io {
            op: "rename",
            path: p.clone(),
            source: e.error,
        })?;
        fsync_dir(&self.root)?;
        Ok(out)
    }

    /// Point `name` (a normalised reference) at the manifest `digest`.
    pub fn tag(&self, name: &str, digest: &Digest) -> Result<()> {
        self.update_refs(|r| {
            r.insert(name.to_owned(), digest.clone());
            Ok(())
        })
    }

    /// Remove the name `name`; the blobs stay until `gc`.
    pub fn untag(&self, name: &str) -> Result<Digest> {
        let name = crate::reference::normalize(name)?;
        self.update_refs(|r| {
            r.remove(&name)
                .ok_or(ImageError::UnknownImage(name.clone()))
        })
    }

    /// The manifest digest `name` points at. `name` may also be a manifest digest in the store.
    pub fn resolve(&self, name: &str) -> Result<Digest> {
        if let Ok(d) = name.parse::<Digest>() {
            if self.has_blob(&d) {
                return Ok(d);
            }
        }
        let norm = crate::reference::normalize(name)?;
        self.read_refs()?
            .remove(&norm)
            .ok_or(ImageError::UnknownImage(norm))
    }

    /// Every tagged image.
    pub fn list(&self) -> Result<Vec<ImageSummary>> {
        let mut out = Vec::new();
        for (name, digest) in self.read_refs()? {
            let size = self
                .manifest(&digest)
                .map(|m| m.layers.iter().map(|l| l.size).sum())
                .unwrap_or(0);
            out.push(ImageSummary { name, digest, size });
        }
        Ok(out)
    }

    /// The image manifest stored as `d`.
    pub fn manifest(&self, d: &Digest) -> Result<Manifest> {
        let raw = self.read_blob(d, MAX_MANIFEST_BYTES as u64)?;
        match Document::parse(&raw, d.as_str())? {
            Document::Manifest(m) => Ok(m),
            Document::Index(_) => Err(ImageError::BadManifest {
                what: d.to_string(),
                reason: "is an index, not an image manifest".into(),
            }),
        }
    }

    /// Manifest, config and diff IDs of the image `name` (or manifest digest).
    pub fn image(&self, name: &str) -> Result<StoredImage> {
        let manifest_digest = self.resolve(name)?;
        self.image_by_digest(&manifest_digest)
    }

    /// Manifest, config and diff IDs of the image whose manifest is `manifest_digest`.
    pub fn image_by_digest(&self, manifest_digest: &Digest) -> Result<StoredImage> {
        let manifest = self.manifest(manifest_digest)?;
        let config_raw = self.read_blob(&manifest.config.digest, MAX_CONFIG_BYTES)?;
        let config: oci_spec::image::ImageConfiguration = serde_json::from_slice(&config_raw)
            .map_err(ImageError::json(manifest.config.digest.as_str()))?;
        let diff_ids = config
            .rootfs()
            .diff_ids()
            .iter()
            .map(|s| s.parse())
            .collect::<Result<Vec<Digest>>>()?;
        if diff_ids.len() != manifest.layers.len() {
            return Err(ImageError::BadManifest {
                what: manifest_digest.to_string(),
                reason: format!(
                    "{} layers but the config lists {} diff IDs",
                    manifest.layers.len(),
                    diff_ids.len()
                ),
            });
        }
        Ok(StoredImage {
            manifest_digest: manifest_digest.clone(),
            manifest,
            config_raw,
            config,
            diff_ids,
        })
    }

    /// The config JSON of `name`, for `inspect`.
    pub fn inspect(&self, name: &str) -> Result<serde_json::Value> {
        let img = self.image(name)?;
        serde_json::from_slice(&img.config_raw)
            .map_err(ImageError::json(img.manifest.config.digest.as_str()))
    }

    /// Remove every blob and snapshot that no tag and no container references, and everything in
    /// `tmp/`. Takes the store lock exclusively, so it waits for running pulls.
    pub fn gc(&self) -> Result<GcReport> {
        let _l = self.lock("store.lock", FlockArg::LockExclusive)?;
        let mut blobs = BTreeSet::new();
        let mut snaps = BTreeSet::new();
        for (_, d) in self.read_refs()? {
            blobs.insert(d.clone());
            if let Ok(img) = self.image_by_digest(&d) {
                blobs.insert(img.manifest.config.digest.clone());
                blobs.extend(img.manifest.layers.iter().map(|l| l.digest.clone()));
                snaps.extend(img.chain_ids());
            }
        }
        snaps.extend(self.container_chains()?);
        let mut report = GcReport::default();
        for e in read_dir(&self.root.join("blobs/sha256"))? {
            let keep = Digest::from_hex(&e.file_name().to_string_lossy())
                .is_ok_and(|d| blobs.contains(&d));
            if !keep {
                report.bytes_freed += e.metadata().map(|m| m.len()).unwrap_or(0);
                fs::remove_file(e.path()).map_err(ImageError::io("remove", e.path()))?;
                report.blobs_removed += 1;
            }
        }
        for e in read_dir(&self.root.join("snapshots"))? {
            let keep = Digest::from_hex(&e.file_name().to_string_lossy())
                .is_ok_and(|d| snaps.contains(&d));
            if !keep {
                fs::remove_dir_all(e.path()).map_err(ImageError::io("remove", e.path()))?;
                report.snapshots_removed += 1;
            }
        }
        for e in read_dir(&self.tmp_dir())? {
            let p = e.path();
            let r = if p.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            r.map_err(ImageError::io("remove", &p))?;
        }
        Ok(report)
    }

    /// Chain IDs recorded by prepared container rootfs (`containers/<id>/chains`).
    fn container_chains(&self) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        for e in read_dir(&self.root.join("containers"))? {
            if let Ok(s) = fs::read_to_string(e.path().join("chains")) {
                out.extend(s.lines().filter_map(|l| l.parse().ok()));
            }
        }
        Ok(out)
    }
}

fn read_dir(p: &Path) -> Result<Vec<fs::DirEntry>> {
    fs::read_dir(p)
        .and_then(|it| it.collect::<std::io::Result<Vec<_>>>())
        .map_err(ImageError::io("read directory", p))
}
