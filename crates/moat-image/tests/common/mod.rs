//! Test helpers: raw tar building (including entries that `tar::Builder` would refuse), gzip and
//! zstd, and OCI image layouts written from Rust.
#![allow(dead_code)]

pub mod registry;

use std::io::Write;
use std::path::Path;

use sha2::Digest as _;
use tar::{EntryType, Header};

/// A tar stream built entry by entry with raw names.
pub struct Tar {
    b: tar::Builder<Vec<u8>>,
}

impl Default for Tar {
    fn default() -> Self {
        Self::new()
    }
}

impl Tar {
    pub fn new() -> Self {
        Tar {
            b: tar::Builder::new(Vec::new()),
        }
    }

    /// An entry with `path` and `link` written byte for byte into the header.
    pub fn raw(
        &mut self,
        kind: EntryType,
        path: &[u8],
        link: &[u8],
        data: &[u8],
        mode: u32,
    ) -> &mut Self {
        let mut h = Header::new_gnu();
        {
            let old = h.as_old_mut();
            old.name[..path.len()].copy_from_slice(path);
            old.linkname[..link.len()].copy_from_slice(link);
        }
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(1_600_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    pub fn dir(&mut self, p: &str) -> &mut Self {
        self.raw(EntryType::Directory, p.as_bytes(), b"", b"", 0o755)
    }
    pub fn file(&mut self, p: &str, data: &[u8]) -> &mut Self {
        self.raw(EntryType::Regular, p.as_bytes(), b"", data, 0o644)
    }
    pub fn file_mode(&mut self, p: &str, data: &[u8], mode: u32) -> &mut Self {
        self.raw(EntryType::Regular, p.as_bytes(), b"", data, mode)
    }
    pub fn symlink(&mut self, p: &str, target: &str) -> &mut Self {
        self.raw(
            EntryType::Symlink,
            p.as_bytes(),
            target.as_bytes(),
            b"",
            0o777,
        )
    }
    pub fn hardlink(&mut self, p: &str, target: &str) -> &mut Self {
        self.raw(EntryType::Link, p.as_bytes(), target.as_bytes(), b"", 0o644)
    }
    /// A PAX extended header applying to the next entry.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut data = Vec::new();
        for (k, v) in records {
            let body_len = k.len() + v.len() + 3; // ' ', '=', '\n'
            let mut len = body_len + 1;
            while len.to_string().len() + body_len != len {
                len += 1;
            }
            write!(data, "{len} {k}=").unwrap();
            data.extend_from_slice(v);
            data.push(b'\n');
        }
        self.raw(EntryType::XHeader, b"././@PaxHeader", b"", &data, 0o644)
    }
    /// A regular file of `size` zero bytes, written without holding it in memory twice.
    pub fn zeros(&mut self, p: &str, size: u64) -> &mut Self {
        let mut h = Header::new_gnu();
        h.set_path(p).unwrap();
        h.set_entry_type(EntryType::Regular);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        self.b.append(&h, std::io::repeat(0).take_n(size)).unwrap();
        self
    }
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::replace(&mut self.b, tar::Builder::new(Vec::new()))
            .into_inner()
            .unwrap()
    }
}

trait TakeN: std::io::Read + Sized {
    fn take_n(self, n: u64) -> std::io::Take<Self> {
        std::io::Read::take(self, n)
    }
}
impl<R: std::io::Read> TakeN for R {}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

pub fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// A layer to put in a layout: the uncompressed tar and how to compress it.
pub enum Comp {
    None,
    Gzip,
    Zstd,
}

/// Write an OCI image layout at `dir` holding one image tagged `tag` with `layers` (bottom
/// first) and a config with `cmd`.
pub fn write_layout(dir: &Path, tag: &str, layers: &[(Vec<u8>, Comp)], cmd: &[&str]) -> String {
    write_layout_platform(dir, tag, layers, cmd, "amd64")
}

pub fn write_blob(dir: &Path, data: &[u8]) -> String {
    let d = sha(data);
    let p = dir.join("blobs/sha256");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join(&d[7..]), data).unwrap();
    d
}

/// As `write_layout`, with the config's architecture set; returns the manifest digest.
pub fn write_layout_platform(
    dir: &Path,
    tag: &str,
    layers: &[(Vec<u8>, Comp)],
    cmd: &[&str],
    arch: &str,
) -> String {
    let mut diff_ids = Vec::new();
    let mut descs = Vec::new();
    for (tar, comp) in layers {
        diff_ids.push(sha(tar));
        let (blob, mt) = match comp {
            Comp::None => (tar.clone(), "application/vnd.oci.image.layer.v1.tar"),
            Comp::Gzip => (gzip(tar), "application/vnd.oci.image.layer.v1.tar+gzip"),
            Comp::Zstd => (zstd(tar), "application/vnd.oci.image.layer.v1.tar+zstd"),
        };
        let d = write_blob(dir, &blob);
        descs.push(serde_json::json!({"mediaType": mt, "digest": d, "size": blob.len()}));
    }
    let config = serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {"Env": ["PATH=/bin", "HELLO=world"], "Cmd": cmd, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = serde_json::to_vec(&config).unwrap();
    let cd = write_blob(dir, &config);
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": descs,
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let md = write_blob(dir, &manifest);
    let index = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag}}],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    md
}

/// Every path below `dir`, relative, sorted.
pub fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
        let mut es: Vec<_> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap()).collect();
        es.sort_by_key(|e| e.file_name());
        for e in es {
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}
