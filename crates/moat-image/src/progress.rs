//! Progress reporting of a pull as a callback trait, so that the CLI can draw bars (indicatif) on
//! a terminal and print plain lines elsewhere. Every method has an empty default; implementations
//! must be cheap, they are called for each chunk received.

use std::io::Write;
use std::sync::Mutex;

use crate::digest::Digest;

/// Callbacks of a pull, in the order they happen for each blob.
pub trait Progress: Send + Sync {
    /// The reference resolved to this image manifest.
    fn resolved(&self, _reference: &str, _manifest: &Digest) {}
    /// A blob download starts (`size` from the manifest).
    fn blob_start(&self, _digest: &Digest, _size: u64) {}
    /// `done` of `size` bytes of a blob have been received.
    fn blob_progress(&self, _digest: &Digest, _done: u64, _size: u64) {}
    /// A blob is committed to the store (`cached`: it was already there).
    fn blob_done(&self, _digest: &Digest, _cached: bool) {}
    /// A download attempt failed and will be retried.
    fn retry(&self, _digest: &Digest, _attempt: u32, _error: &str) {}
    /// A layer was unpacked into its snapshot (`cached`: the snapshot already existed).
    fn unpacked(&self, _layer: &Digest, _chain: &Digest, _cached: bool) {}
}

/// Reports nothing.
pub struct NoProgress;
impl Progress for NoProgress {}

/// One plain line per event on a writer (stderr by default), for logs and non-terminals.
pub struct LineProgress {
    out: Mutex<Box<dyn Write + Send>>,
}

impl Default for LineProgress {
    fn default() -> Self {
        LineProgress {
            out: Mutex::new(Box::new(std::io::stderr())),
        }
    }
}

impl LineProgress {
    /// Lines go to `w`.
    pub fn new(w: Box<dyn Write + Send>) -> Self {
        LineProgress { out: Mutex::new(w) }
    }

    fn line(&self, s: std::fmt::Arguments<'_>) {
        if let Ok(mut o) = self.out.lock() {
            let _ = writeln!(o, "{s}");
        }
    }
}

fn short(d: &Digest) -> &str {
    &d.hex()[..12]
}

impl Progress for LineProgress {
    fn resolved(&self, reference: &str, manifest: &Digest) {
        self.line(format_args!("{reference}: manifest {manifest}"));
    }
    fn blob_start(&self, digest: &Digest, size: u64) {
        self.line(format_args!("{}: downloading {size} bytes", short(digest)));
    }
    fn blob_done(&self, digest: &Digest, cached: bool) {
        let what = if cached {
            "already present"
        } else {
            "verified and stored"
        };
        self.line(format_args!("{}: {what}", short(digest)));
    }
    fn retry(&self, digest: &Digest, attempt: u32, error: &str) {
        self.line(format_args!(
            "{}: attempt {attempt} failed, retrying: {error}",
            short(digest)
        ));
    }
    fn unpacked(&self, layer: &Digest, chain: &Digest, cached: bool) {
        let what = if cached {
            "snapshot present"
        } else {
            "unpacked"
        };
        self.line(format_args!("{}: {what} ({})", short(layer), short(chain)));
    }
}
