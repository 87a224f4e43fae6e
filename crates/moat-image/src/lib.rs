//! `moat-image` is moat's image store: it pulls images from OCI Distribution registries
//! ([`pull`]), keeps them in a content-addressed store ([`store`]), unpacks layers safely
//! ([`unpack`]) into shared snapshots mounted as overlay lowerdirs ([`snapshot`]), imports and
//! exports OCI layouts and docker/oci archives ([`archive`]), and turns an image config into a
//! runtime spec ([`spec`]).
//!
//! What it must never do: commit a blob whose digest or size was not checked, write outside an
//! unpack root whatever a layer holds, or talk plain HTTP to a registry that is neither on loopback
//! nor listed as insecure.
#![forbid(unsafe_code)]

pub mod archive;
pub mod auth;
pub mod digest;
pub mod error;
pub mod flatten;
pub mod manifest;
pub mod progress;
pub mod pull;
pub mod reference;
pub mod snapshot;
pub mod spec;
pub mod store;
pub mod unpack;

pub use digest::Digest;
pub use error::{ImageError, Result};
pub use manifest::Platform;
pub use progress::{LineProgress, NoProgress, Progress};
pub use pull::{pull, pull_blocking, PullOptions, Pulled};
pub use snapshot::{prepare_rootfs, Rootfs};
pub use store::{GcReport, ImageSummary, Store, StoredImage};
pub use unpack::{Limits, UnpackOptions};
