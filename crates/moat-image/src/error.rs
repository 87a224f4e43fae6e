//! The one error type of the image store. Every variant names what failed: the digest, the path,
//! the image name or the registry, so that a caller can print it as one line.

use std::path::PathBuf;

/// Result type of this crate.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;

/// What can go wrong while pulling, storing, unpacking or mounting an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference {reference:?}: {reason}")]
    BadReference { reference: String, reason: String },
    #[error("invalid digest {0:?}: expected sha256:<64 lowercase hex digits>")]
    BadDigest(String),
    #[error("blob {digest}: digest mismatch (content hashes to {actual})")]
    DigestMismatch { digest: String, actual: String },
    #[error("blob {digest}: size mismatch (expected {expected} bytes, got {actual})")]
    SizeMismatch {
        digest: String,
        expected: u64,
        actual: u64,
    },
    #[error("layer {digest}: uncompressed content hashes to {actual}, config says {expected}")]
    DiffIdMismatch {
        digest: String,
        expected: String,
        actual: String,
    },
    #[error("registry {registry}: {source}")]
    Registry {
        registry: String,
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    #[error("blob {digest}: download failed after {attempts} attempts: {reason}")]
    Download {
        digest: String,
        attempts: u32,
        reason: String,
    },
    #[error("{what}: {reason}")]
    BadManifest { what: String, reason: String },
    #[error("no manifest for platform {platform} in index {digest}")]
    NoPlatform { platform: String, digest: String },
    #[error("image {0} not found in the store")]
    UnknownImage(String),
    #[error("blob {0} not found in the store")]
    MissingBlob(String),
    #[error("layer {digest}: entry {path:?}: {reason}")]
    UnsafeEntry {
        digest: String,
        path: String,
        reason: String,
    },
    #[error("layer {digest}: {what} exceeds the limit of {limit}")]
    LimitExceeded {
        digest: String,
        what: &'static str,
        limit: u64,
    },
    #[error("layer {digest}: {source}")]
    Layer {
        digest: String,
        #[source]
        source: std::io::Error,
    },
    #[error("auth file {path}: {reason}")]
    AuthFile { path: PathBuf, reason: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{op} {path}: {errno}")]
    Sys {
        op: &'static str,
        path: PathBuf,
        errno: nix::errno::Errno,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("image config: {0}")]
    Config(String),
    #[error("archive {path}: {reason}")]
    Archive { path: PathBuf, reason: String },
}

impl ImageError {
    /// An `Io` error for `op` on `path`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| ImageError::Io { op, path, source }
    }

    /// A `Sys` error for `op` on `path`.
    pub fn sys(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(nix::errno::Errno) -> Self {
        let path = path.into();
        move |errno| ImageError::Sys { op, path, errno }
    }

    /// A `Json` error for the document `what`.
    pub fn json(what: impl Into<String>) -> impl FnOnce(serde_json::Error) -> Self {
        let path = what.into();
        move |source| ImageError::Json { path, source }
    }
}
