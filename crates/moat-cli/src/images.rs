//! The image commands: `pull`, `images`, `rmi`, `image import|export|inspect|gc`. Thin
//! translations onto `moat_image`: the store does the verifying, locking and unpacking; this
//! module picks the progress display, formats tables and refuses to remove an image a container
//! still uses.

use std::path::Path;

use moat_image::{archive, PullOptions, Store};

use crate::error::{CliError, Result};
use crate::meta::{Paths, RootfsSource};

/// Options shared by every command that may reach a registry.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    pub insecure: Vec<String>,
}

/// Pull `reference` with progress on stderr; returns the normalised name.
pub fn pull(store: &Store, reference: &str, reg: &RegistryOptions) -> Result<String> {
    let opts = PullOptions {
        insecure_registries: reg.insecure.clone(),
        ..Default::default()
    };
    let progress = crate::progress::for_stderr();
    let pulled = moat_image::pull_blocking(store, reference, &opts, progress.as_ref())
        .map_err(CliError::image(format!("pull {reference}")))?;
    drop(progress);
    eprintln!(
        "{}: pulled {} ({} bytes downloaded)",
        pulled.name, pulled.manifest_digest, pulled.downloaded
    );
    Ok(pulled.name)
}

/// Human-readable size, as docker prints it.
pub fn human_size(n: u64) -> String {
    const UNITS: &[&str] = &["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        return format!("{n}B");
    }
    let num = format!("{v:.3}");
    let num = num.trim_end_matches('0').trim_end_matches('.');
    format!("{num}{}", UNITS[u])
}

/// `registry/repo:tag` split into (repository, tag or digest).
fn split_name(name: &str) -> (&str, &str) {
    if let Some((r, d)) = name.split_once('@') {
        return (r, d);
    }
    match name.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, t),
        _ => (name, ""),
    }
}

/// `moat images`: one row per tag.
pub fn list(store: &Store, quiet: bool, json: bool) -> Result<()> {
    let images = store.list().map_err(CliError::image("list images"))?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&images).unwrap_or_default()
        );
        return Ok(());
    }
    if quiet {
        for i in &images {
            println!("{}", i.digest);
        }
        return Ok(());
    }
    println!(
        "{:<40} {:<16} {:<14} {:>10}",
        "REPOSITORY", "TAG", "IMAGE ID", "SIZE"
    );
    for i in &images {
        let (repo, tag) = split_name(&i.name);
        println!(
            "{:<40} {:<16} {:<14} {:>10}",
            repo,
            tag,
            &i.digest.hex()[..12],
            human_size(i.size)
        );
    }
    Ok(())
}

/// `moat rmi`: untag, refusing while a container uses the image unless `force`.
pub fn remove(store: &Store, paths: &Paths, reference: &str, force: bool) -> Result<()> {
    let digest = store
        .resolve(reference)
        .map_err(CliError::image(format!("remove image {reference}")))?;
    if !force {
        for m in paths.list()? {
            if let RootfsSource::Image { digest: d, .. } = &m.rootfs {
                if d == digest.as_str() {
                    return Err(CliError::Usage(format!(
                        "remove image {reference}: container {} ({}) uses it; remove the container first or use --force",
                        &m.id[..12],
                        m.name
                    )));
                }
            }
        }
    }
    let d = store
        .untag(reference)
        .map_err(CliError::image(format!("remove image {reference}")))?;
    println!("Untagged: {reference} ({d}); `moat image gc` frees its blobs");
    Ok(())
}

/// `moat image import`: an OCI layout directory, an oci-archive or a docker-archive tarball.
pub fn import(store: &Store, path: &Path, name: Option<&str>) -> Result<()> {
    let what = format!("import {}", path.display());
    let tagged = if path.is_dir() {
        archive::import_oci_layout(store, path, name)
    } else {
        match archive::import_oci_archive(store, path, name) {
            Ok(t) => Ok(t),
            Err(oci_err) => archive::import_docker_archive(store, path, name).map_err(|docker| {
                moat_image::ImageError::Archive {
                    path: path.into(),
                    reason: format!(
                        "neither an oci-archive ({oci_err}) nor a docker-archive ({docker})"
                    ),
                }
            }),
        }
    }
    .map_err(CliError::image(what.clone()))?;
    if tagged.is_empty() {
        return Err(CliError::Usage(format!(
            "{what}: no image carries a full name (ref.name annotation or RepoTags); give one with --name"
        )));
    }
    for (n, d) in tagged {
        println!("Loaded image: {n} ({d})");
    }
    Ok(())
}

/// `moat image export`: an OCI layout when `path` is an existing directory or ends in `/`, a
/// docker-archive (`docker save` format) when it starts with `docker-archive:`, an oci-archive
/// tarball otherwise.
pub fn export(store: &Store, reference: &str, path: &Path) -> Result<()> {
    let what = format!("export {reference} to {}", path.display());
    let text = path.as_os_str().to_string_lossy();
    if let Some(p) = text.strip_prefix("docker-archive:") {
        archive::export_docker_archive(store, reference, Path::new(p))
    } else if path.is_dir() || text.ends_with('/') {
        archive::export_oci_layout(store, reference, path)
    } else {
        archive::export_oci_archive(store, reference, path)
    }
    .map_err(CliError::image(what))
}

/// `moat image inspect`: name, digests, layers and the image config as JSON.
pub fn inspect(store: &Store, reference: &str) -> Result<()> {
    let img = store
        .image(reference)
        .map_err(CliError::image(format!("inspect image {reference}")))?;
    let config: serde_json::Value = serde_json::from_slice(&img.config_raw).unwrap_or_default();
    let out = serde_json::json!({
        "Name": moat_image::reference::normalize(reference).unwrap_or_else(|_| reference.into()),
        "Digest": img.manifest_digest.to_string(),
        "ConfigDigest": img.manifest.config.digest.to_string(),
        "Layers": img.manifest.layers.iter().map(|l| serde_json::json!({
            "Digest": l.digest.to_string(), "Size": l.size, "MediaType": l.media_type,
        })).collect::<Vec<_>>(),
        "DiffIds": img.diff_ids.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        "Config": config,
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    Ok(())
}

/// `moat image gc`.
pub fn gc(store: &Store) -> Result<()> {
    let r = store
        .gc()
        .map_err(CliError::image("garbage-collect images"))?;
    println!(
        "removed {} blobs and {} snapshots, freed {}",
        r.blobs_removed,
        r.snapshots_removed,
        human_size(r.bytes_freed)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_names_format_like_docker() {
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(1_500_000), "1.5MB");
        assert_eq!(human_size(2_000), "2kB");
        assert_eq!(
            split_name("docker.io/library/busybox:latest"),
            ("docker.io/library/busybox", "latest")
        );
        assert_eq!(
            split_name("127.0.0.1:5000/a/b:t"),
            ("127.0.0.1:5000/a/b", "t")
        );
    }
}
