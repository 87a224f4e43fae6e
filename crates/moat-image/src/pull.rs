//! Pulling an image from an OCI Distribution (Docker Registry v2) registry with `oci-client`:
//! resolve the reference (with platform selection in indexes), then fetch config and layers
//! concurrently into the store. Each blob is streamed to a temporary file, hashed and counted as it
//! arrives (a blob larger than its descriptor is cut off at once), retried with backoff on network
//! and 5xx errors, resumed with a Range request when the registry honours it (restarted from zero
//! when it does not), and committed only when its sha256 and size match the manifest.
//!
//! Plain HTTP is used only for loopback registries and those listed in `insecure_registries`.

use std::path::PathBuf;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::digest::Digest;
use crate::error::{ImageError, Result};
use crate::manifest::{Descriptor, Document, Platform, ACCEPTED_MANIFESTS, MAX_CONFIG_BYTES};
use crate::progress::Progress;
use crate::reference;
use crate::snapshot;
use crate::store::Store;
use crate::unpack::UnpackOptions;

/// How to pull.
#[derive(Clone, Debug)]
pub struct PullOptions {
    /// Platform chosen from an index (default linux/amd64).
    pub platform: Platform,
    /// Registries (`host[:port]`) reached over plain HTTP besides loopback ones.
    pub insecure_registries: Vec<String>,
    /// Blobs downloaded at once.
    pub max_concurrent: usize,
    /// Attempts per blob (1 = no retry).
    pub attempts: u32,
    /// Credentials; `None` looks them up in `auth_files`.
    pub auth: Option<RegistryAuth>,
    /// Auth files searched when `auth` is `None`.
    pub auth_files: Vec<PathBuf>,
    /// Unpack the layers into snapshots after the download (`None`: download only).
    pub unpack: Option<UnpackOptions>,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            platform: Platform::default(),
            insecure_registries: Vec::new(),
            max_concurrent: 4,
            attempts: 4,
            auth: None,
            auth_files: crate::auth::default_auth_files(),
            unpack: Some(UnpackOptions::default()),
        }
    }
}

/// What a pull stored.
#[derive(Clone, Debug)]
pub struct Pulled {
    /// Normalised name the image is tagged as.
    pub name: String,
    pub manifest_digest: Digest,
    /// Layer digests, bottom first.
    pub layers: Vec<Digest>,
    /// Chain IDs of the snapshots (empty when not unpacked).
    pub chain_ids: Vec<Digest>,
    /// Bytes downloaded (blobs already present are not counted).
    pub downloaded: u64,
}

/// Pull `name` into `store` from a blocking caller (builds a tokio runtime for the pull).
pub fn pull_blocking(
    store: &Store,
    name: &str,
    opts: &PullOptions,
    progress: &dyn Progress,
) -> Result<Pulled> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(ImageError::io("start tokio runtime for", name))?;
    rt.block_on(pull(store, name, opts, progress))
}

/// Pull `name` into `store`, tag it, and unpack it when `opts.unpack` is set. Runs blocking file
/// work (fsync, unpack) with `block_in_place`, so it needs tokio's multi-thread runtime.
pub async fn pull(
    store: &Store,
    name: &str,
    opts: &PullOptions,
    progress: &dyn Progress,
) -> Result<Pulled> {
    let reference = reference::parse(name)?;
    let norm = reference.whole();
    let registry = reference.resolve_registry().to_owned();
    let s2 = store.clone();
    let _lock = tokio::task::spawn_blocking(move || s2.shared_lock())
        .await
        .map_err(|e| ImageError::io("lock", store.root())(std::io::Error::other(e)))??;
    let protocol = if reference::plain_http(&registry, &opts.insecure_registries) {
        ClientProtocol::HttpsExcept(vec![registry.clone()])
    } else {
        ClientProtocol::Https
    };
    let client = Client::new(ClientConfig {
        protocol,
        platform_resolver: None,
        connect_timeout: Some(Duration::from_secs(30)),
        read_timeout: Some(Duration::from_secs(120)),
        ..Default::default()
    });
    let auth = match &opts.auth {
        Some(a) => a.clone(),
        None => crate::auth::lookup(
            &opts.auth_files,
            reference.registry(),
            reference.repository(),
        )?,
    };
    let reg_err = |source| ImageError::Registry {
        registry: registry.clone(),
        source,
    };

    // Manifest, through an index if there is one.
    let (raw, _) = client
        .pull_manifest_raw(&reference, &auth, ACCEPTED_MANIFESTS)
        .await
        .map_err(reg_err)?;
    let mut digest = Digest::of(&raw);
    let mut raw = raw.to_vec();
    let manifest = match Document::parse(&raw, &norm)? {
        Document::Manifest(m) => m,
        Document::Index(ix) => {
            store.put_blob(&raw, Some(&digest))?;
            let entry = ix.select(&opts.platform, &digest)?.clone();
            let by_digest = reference.clone_with_digest(entry.digest.to_string());
            let (r, _) = client
                .pull_manifest_raw(&by_digest, &auth, ACCEPTED_MANIFESTS)
                .await
                .map_err(reg_err)?;
            check_descriptor(&entry, &r)?;
            raw = r.to_vec();
            digest = entry.digest.clone();
            match Document::parse(&raw, entry.digest.as_str())? {
                Document::Manifest(m) => m,
                Document::Index(_) => {
                    return Err(ImageError::BadManifest {
                        what: entry.digest.to_string(),
                        reason: "index entry points at another index".into(),
                    })
                }
            }
        }
    };
    if let Some(want) = reference.digest() {
        if want != digest.as_str() {
            return Err(ImageError::DigestMismatch {
                digest: want.into(),
                actual: digest.to_string(),
            });
        }
    }
    progress.resolved(&norm, &digest);
    if manifest.config.size > MAX_CONFIG_BYTES {
        return Err(ImageError::BadManifest {
            what: digest.to_string(),
            reason: format!("config of {} bytes is over the limit", manifest.config.size),
        });
    }

    // Config and layers, concurrently; each committed only once verified.
    let mut wanted: Vec<&Descriptor> = vec![&manifest.config];
    for l in &manifest.layers {
        if !wanted.iter().any(|w| w.digest == l.digest) {
            wanted.push(l);
        }
    }
    let downloaded: Vec<u64> = futures_util::stream::iter(wanted)
        .map(|d| {
            fetch_blob(
                &client,
                &reference,
                d,
                store,
                opts.attempts,
                progress,
                &registry,
            )
        })
        .buffer_unordered(opts.max_concurrent.max(1))
        .try_collect()
        .await?;
    store.put_blob(&raw, Some(&digest))?;

    let mut chain_ids = Vec::new();
    if let Some(uo) = opts.unpack {
        let img = store.image_by_digest(&digest)?;
        chain_ids =
            tokio::task::block_in_place(|| snapshot::ensure_snapshots(store, &img, &uo, progress))?;
    }
    store.tag(&norm, &digest)?;
    Ok(Pulled {
        name: norm,
        manifest_digest: digest,
        layers: manifest.layers.iter().map(|l| l.digest.clone()).collect(),
        chain_ids,
        downloaded: downloaded.iter().sum(),
    })
}

fn check_descriptor(d: &Descriptor, body: &[u8]) -> Result<()> {
    let actual = Digest::of(body);
    if actual != d.digest {
        return Err(ImageError::DigestMismatch {
            digest: d.digest.to_string(),
            actual: actual.to_string(),
        });
    }
    if body.len() as u64 != d.size {
        return Err(ImageError::SizeMismatch {
            digest: d.digest.to_string(),
            expected: d.size,
            actual: body.len() as u64,
        });
    }
    Ok(())
}

/// Whether a failed attempt is worth another: network trouble, 5xx, 429.
fn retryable(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::RequestError(_) | OciDistributionError::IoError(_) => true,
        OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
        _ => false,
    }
}

enum Attempt {
    Done,
    Retry(String),
}

/// Download one blob into the store; returns the bytes downloaded (0 when already present).
async fn fetch_blob(
    client: &Client,
    reference: &Reference,
    desc: &Descriptor,
    store: &Store,
    attempts: u32,
    progress: &dyn Progress,
    registry: &str,
) -> Result<u64> {
    if store.has_blob(&desc.digest) {
        progress.blob_done(&desc.digest, true);
        return Ok(0);
    }
    progress.blob_start(&desc.digest, desc.size);
    let mut w = store.blob_writer(&desc.digest, Some(desc.size))?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let outcome = fetch_once(client, reference, desc, &mut w, progress).await;
        let reason = match outcome {
            Ok(Attempt::Done) => break,
            Ok(Attempt::Retry(r)) => r,
            Err(FetchError::Fatal(e)) => return Err(e),
            Err(FetchError::Registry(e)) if !retryable(&e) => {
                return Err(ImageError::Registry {
                    registry: registry.to_owned(),
                    source: e,
                })
            }
            Err(FetchError::Registry(e)) => e.to_string(),
        };
        if attempt >= attempts {
            return Err(ImageError::Download {
                digest: desc.digest.to_string(),
                attempts,
                reason,
            });
        }
        progress.retry(&desc.digest, attempt, &reason);
        tokio::time::sleep(Duration::from_millis(200 << attempt.min(6))).await;
    }
    let n = w.len();
    tokio::task::block_in_place(|| w.commit())?;
    progress.blob_done(&desc.digest, false);
    Ok(n)
}

enum FetchError {
    Fatal(ImageError),
    Registry(OciDistributionError),
}

/// One attempt: from the writer's current length (Range) or from zero.
async fn fetch_once(
    client: &Client,
    reference: &Reference,
    desc: &Descriptor,
    w: &mut crate::store::BlobWriter,
    progress: &dyn Progress,
) -> Result<Attempt, FetchError> {
    let digest = desc.digest.as_str();
    let mut stream = if w.is_empty() {
        client
            .pull_blob_stream(reference, digest)
            .await
            .map_err(FetchError::Registry)?
    } else {
        match client
            .pull_blob_stream_partial(reference, digest, w.len(), None)
            .await
            .map_err(FetchError::Registry)?
        {
            BlobResponse::Partial(s) => s,
            BlobResponse::Full(s) => {
                w.restart().map_err(FetchError::Fatal)?;
                s
            }
        }
    };
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => {
                w.write(&bytes).map_err(FetchError::Fatal)?;
                progress.blob_progress(&desc.digest, w.len(), desc.size);
            }
            // oci-client's own digest check fails at the end of a full stream: everything is
            // written, and commit() reports the mismatch naming the digest.
            Err(e)
                if e.get_ref()
                    .is_some_and(|i| i.is::<oci_client::errors::DigestError>()) =>
            {
                return Ok(Attempt::Done)
            }
            Err(e) => return Ok(Attempt::Retry(e.to_string())),
        }
    }
    if w.len() < desc.size {
        return Ok(Attempt::Retry(format!(
            "connection closed after {} of {} bytes",
            w.len(),
            desc.size
        )));
    }
    Ok(Attempt::Done)
}
