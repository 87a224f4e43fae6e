//! Import and export of images without a registry: OCI image layout directories, `oci-archive`
//! tarballs (a layout in a tar) and `docker-archive` tarballs (`docker save`: `manifest.json`, a
//! config JSON and one tar per layer). Every blob taken in is verified against its digest and size
//! exactly as a pulled one is; archives are extracted with the same hostile-input unpacker as
//! layers (unprivileged: no devices, no ownership), and paths named by `manifest.json` or
//! `index.json` are opened inside the extracted tree only.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::Path;

use crate::digest::Digest;
use crate::error::{ImageError, Result};
use crate::manifest::{self, Descriptor, Document, Index, Manifest, Platform};
use crate::store::Store;
use crate::unpack::{unpack_layer, Limits, UnpackOptions};

/// Annotation holding the tag of a manifest in an OCI layout's `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

fn archive_err(path: &Path, reason: impl Into<String>) -> ImageError {
    ImageError::Archive {
        path: path.into(),
        reason: reason.into(),
    }
}

/// Open `rel` inside the directory `root` (symlinks resolved as if `root` were `/`).
fn open_inside(root: &Path, rel: &str) -> Result<File> {
    let dir = File::open(root).map_err(ImageError::io("open", root))?;
    moat_sys::resolve::open_in_root(dir.as_fd(), Path::new(rel), libc::O_RDONLY, 0)
        .map(File::from)
        .map_err(|e| archive_err(root, format!("{rel}: {e}")))
}

/// Copy the blob `desc` from `src` into the store, verifying digest and size.
fn copy_blob(store: &Store, desc: &Descriptor, mut src: impl Read) -> Result<()> {
    if store.has_blob(&desc.digest) {
        return Ok(());
    }
    let mut w = store.blob_writer(&desc.digest, Some(desc.size))?;
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = src.read(&mut buf).map_err(|e| ImageError::Layer {
            digest: desc.digest.to_string(),
            source: e,
        })?;
        if n == 0 {
            break;
        }
        w.write(&buf[..n])?;
    }
    w.commit().map(|_| ())
}

fn read_json<T: serde::de::DeserializeOwned>(root: &Path, rel: &str, max: u64) -> Result<T> {
    let mut buf = Vec::new();
    open_inside(root, rel)?
        .take(max)
        .read_to_end(&mut buf)
        .map_err(ImageError::io("read", root.join(rel)))?;
    serde_json::from_slice(&buf).map_err(ImageError::json(root.join(rel).display().to_string()))
}

/// Import an OCI image layout directory. With `name`, the layout must hold one image (or one
/// whose ref-name annotation is `name`'s tag) and it is tagged `name`; without, every manifest
/// with a ref-name annotation that is a full reference is tagged with it. Returns (name, manifest
/// digest) of what was tagged.
pub fn import_oci_layout(
    store: &Store,
    dir: &Path,
    name: Option<&str>,
) -> Result<Vec<(String, Digest)>> {
    let _lock = store.shared_lock()?;
    let index: Index = read_json(dir, "index.json", manifest::MAX_MANIFEST_BYTES as u64)?;
    let blob = |d: &Digest| open_inside(dir, &format!("blobs/sha256/{}", d.hex()));
    let mut images: Vec<(Option<String>, Digest)> = Vec::new();
    for entry in &index.manifests {
        let ref_name = entry
            .annotations
            .as_ref()
            .and_then(|a| a.get(REF_NAME))
            .cloned();
        let mut raw = Vec::new();
        blob(&entry.digest)?
            .take(manifest::MAX_MANIFEST_BYTES as u64)
            .read_to_end(&mut raw)
            .map_err(ImageError::io("read", dir))?;
        let (desc, m) = match Document::parse(&raw, entry.digest.as_str())? {
            Document::Manifest(m) => (entry.clone(), m),
            Document::Index(ix) => {
                copy_blob(store, entry, raw.as_slice())?;
                let d = ix.select(&Platform::default(), &entry.digest)?.clone();
                raw.clear();
                blob(&d.digest)?
                    .take(manifest::MAX_MANIFEST_BYTES as u64)
                    .read_to_end(&mut raw)
                    .map_err(ImageError::io("read", dir))?;
                match Document::parse(&raw, d.digest.as_str())? {
                    Document::Manifest(m) => (d, m),
                    Document::Index(_) => return Err(archive_err(dir, "nested index")),
                }
            }
        };
        for l in std::iter::once(&m.config).chain(&m.layers) {
            copy_blob(store, l, blob(&l.digest)?)?;
        }
        copy_blob(store, &desc, raw.as_slice())?;
        images.push((ref_name, desc.digest));
    }
    let mut tagged = Vec::new();
    match name {
        Some(n) => {
            let norm = crate::reference::normalize(n)?;
            let tag = crate::reference::parse(n)?.tag().map(str::to_owned);
            let pick = if images.len() == 1 {
                images.first()
            } else {
                images
                    .iter()
                    .find(|(r, _)| r.is_some() && r.as_deref() == tag.as_deref())
            };
            let (_, d) = pick.ok_or_else(|| {
                archive_err(dir, format!("{} images and none tagged {n}", images.len()))
            })?;
            store.tag(&norm, d)?;
            tagged.push((norm, d.clone()));
        }
        None => {
            for (r, d) in images {
                if let Some(norm) = r
                    .filter(|r| r.contains(':') || r.contains('/'))
                    .and_then(|r| crate::reference::normalize(&r).ok())
                {
                    store.tag(&norm, &d)?;
                    tagged.push((norm, d));
                }
            }
        }
    }
    Ok(tagged)
}

/// Extract an archive (hostile input) into a fresh temporary directory of the store.
fn extract(store: &Store, archive: &Path) -> Result<tempfile::TempDir> {
    let tmp = tempfile::Builder::new()
        .prefix("import-")
        .tempdir_in(store.tmp_dir())
        .map_err(ImageError::io(
            "create temporary directory in",
            store.tmp_dir(),
        ))?;
    let f = File::open(archive).map_err(ImageError::io("open", archive))?;
    let opts = UnpackOptions {
        limits: Limits::default(),
        privileged: false,
        userns: false,
    };
    unpack_layer(f, tmp.path(), &archive.display().to_string(), &opts)?;
    Ok(tmp)
}

/// Import an `oci-archive` tarball (an OCI layout in a tar). See [`import_oci_layout`].
pub fn import_oci_archive(
    store: &Store,
    archive: &Path,
    name: Option<&str>,
) -> Result<Vec<(String, Digest)>> {
    let tmp = extract(store, archive)?;
    import_oci_layout(store, tmp.path(), name)
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Store the file `rel` of `root` as a blob; returns its descriptor.
fn store_file(store: &Store, root: &Path, rel: &str, media_type: &str) -> Result<Descriptor> {
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    let mut f = open_inside(root, rel)?;
    let size =
        std::io::copy(&mut f, &mut hasher).map_err(ImageError::io("read", root.join(rel)))?;
    let digest = Digest::from_hasher(hasher);
    let mut head = [0u8; 4];
    let n = open_inside(root, rel)?
        .read(&mut head)
        .map_err(ImageError::io("read", root.join(rel)))?;
    let media_type = if media_type.is_empty() {
        match manifest::Compression::detect(&head[..n]) {
            manifest::Compression::None => manifest::OCI_LAYER_TAR,
            manifest::Compression::Gzip => manifest::OCI_LAYER_GZIP,
            manifest::Compression::Zstd => manifest::OCI_LAYER_ZSTD,
        }
    } else {
        media_type
    };
    let desc = Descriptor {
        media_type: media_type.into(),
        digest,
        size,
        platform: None,
        annotations: None,
    };
    copy_blob(store, &desc, open_inside(root, rel)?)?;
    Ok(desc)
}

/// Import a `docker-archive` tarball (`docker save`). Each image is stored with an OCI manifest
/// made for it and tagged with its `RepoTags`, or with `name` when given (single-image archives).
pub fn import_docker_archive(
    store: &Store,
    archive: &Path,
    name: Option<&str>,
) -> Result<Vec<(String, Digest)>> {
    let _lock = store.shared_lock()?;
    let tmp = extract(store, archive)?;
    let root = tmp.path();
    let entries: Vec<DockerEntry> = read_json(root, "manifest.json", 16 << 20)?;
    if name.is_some() && entries.len() != 1 {
        return Err(archive_err(
            archive,
            format!("{} images: a name can be given to one only", entries.len()),
        ));
    }
    let mut tagged = Vec::new();
    for e in entries {
        let config = store_file(store, root, &e.config, manifest::OCI_CONFIG)?;
        let layers = e
            .layers
            .iter()
            .map(|l| store_file(store, root, l, ""))
            .collect::<Result<Vec<_>>>()?;
        let m = Manifest {
            schema_version: 2,
            media_type: manifest::OCI_MANIFEST.into(),
            config,
            layers,
        };
        let raw = serde_json::to_vec(&m).map_err(ImageError::json("manifest"))?;
        let d = store.put_blob(&raw, None)?;
        let names: Vec<String> = match name {
            Some(n) => vec![n.to_owned()],
            None => e.repo_tags.unwrap_or_default(),
        };
        for n in names {
            let norm = crate::reference::normalize(&n)?;
            store.tag(&norm, &d)?;
            tagged.push((norm, d.clone()));
        }
    }
    Ok(tagged)
}

/// Export the image `name` as an OCI layout in `dir` (created if missing; blobs are added to an
/// existing layout and `index.json` is rewritten with this image only).
pub fn export_oci_layout(store: &Store, name: &str, dir: &Path) -> Result<()> {
    let img = store.image(name)?;
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(ImageError::io("mkdir", &blobs))?;
    let all = [
        img.manifest_digest.clone(),
        img.manifest.config.digest.clone(),
    ]
    .into_iter()
    .chain(img.manifest.layers.iter().map(|l| l.digest.clone()));
    for d in all {
        let to = blobs.join(d.hex());
        if !to.exists() {
            fs::copy(store.blob_path(&d), &to).map_err(ImageError::io("copy", &to))?;
        }
    }
    let tag = crate::reference::parse(name)
        .ok()
        .and_then(|r| r.tag().map(str::to_owned));
    let size = fs::metadata(store.blob_path(&img.manifest_digest))
        .map_err(ImageError::io("stat", dir))?
        .len();
    let media = if img.manifest.media_type.is_empty() {
        manifest::OCI_MANIFEST.to_owned()
    } else {
        img.manifest.media_type.clone()
    };
    let desc = Descriptor {
        media_type: media,
        digest: img.manifest_digest.clone(),
        size,
        platform: None,
        annotations: tag.map(|t| [(REF_NAME.to_owned(), t)].into_iter().collect()),
    };
    let index = Index {
        schema_version: 2,
        media_type: manifest::OCI_INDEX.into(),
        manifests: vec![desc],
    };
    let write = |rel: &str, body: Vec<u8>| -> Result<()> {
        let p = dir.join(rel);
        File::create(&p)
            .and_then(|mut f| f.write_all(&body))
            .map_err(ImageError::io("write", &p))
    };
    write("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec())?;
    write(
        "index.json",
        serde_json::to_vec(&index).map_err(ImageError::json("index.json"))?,
    )
}

/// Export the image `name` as an `oci-archive` tarball at `out`.
pub fn export_oci_archive(store: &Store, name: &str, out: &Path) -> Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("export-")
        .tempdir_in(store.tmp_dir())
        .map_err(ImageError::io(
            "create temporary directory in",
            store.tmp_dir(),
        ))?;
    export_oci_layout(store, name, tmp.path())?;
    let f = File::create(out).map_err(ImageError::io("create", out))?;
    let mut b = tar::Builder::new(f);
    b.follow_symlinks(false);
    b.append_dir_all(".", tmp.path())
        .map_err(ImageError::io("write", out))?;
    b.into_inner()
        .and_then(|f| f.sync_all())
        .map_err(ImageError::io("write", out))
}

/// Export the image `name` as a docker-archive tarball (`docker save` format: `manifest.json`
/// listing the config and layer files, which are the stored blobs under `blobs/sha256/`, as Docker
/// 25 writes them; `docker load` and `podman load` accept compressed layers).
pub fn export_docker_archive(store: &Store, name: &str, out: &Path) -> Result<()> {
    let img = store.image(name)?;
    let f = File::create(out).map_err(ImageError::io("create", out))?;
    let mut b = tar::Builder::new(f);
    b.follow_symlinks(false);
    let rel = |d: &Digest| format!("blobs/sha256/{}", d.hex());
    let mut files = vec![img.manifest.config.digest.clone()];
    files.extend(img.manifest.layers.iter().map(|l| l.digest.clone()));
    let mut seen = std::collections::BTreeSet::new();
    for d in &files {
        if seen.insert(d.hex().to_owned()) {
            b.append_path_with_name(store.blob_path(d), rel(d))
                .map_err(ImageError::io("write", out))?;
        }
    }
    let tags: Vec<String> = crate::reference::normalize(name)
        .map(|n| vec![n])
        .unwrap_or_default();
    let manifest = serde_json::json!([{
        "Config": rel(&img.manifest.config.digest),
        "RepoTags": tags,
        "Layers": img.manifest.layers.iter().map(|l| rel(&l.digest)).collect::<Vec<_>>(),
    }]);
    let body = serde_json::to_vec(&manifest).map_err(ImageError::json("manifest.json"))?;
    let mut h = tar::Header::new_gnu();
    h.set_size(body.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "manifest.json", body.as_slice())
        .map_err(ImageError::io("write", out))?;
    b.into_inner()
        .and_then(|f| f.sync_all())
        .map_err(ImageError::io("write", out))
}
