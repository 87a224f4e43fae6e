//! The JSON documents of an image as found on a registry or in a layout: image manifests (OCI and
//! Docker schema 2), image indexes and manifest lists, and platform selection among the entries of
//! an index. These are parsers of hostile input: every digest is validated as it is read, unknown
//! fields are ignored, and sizes are bounded before anything is fetched.

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{ImageError, Result};

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// OCI uncompressed layer.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI gzip layer.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI zstd layer.
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Docker gzip layer.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Media types asked for when fetching a manifest by tag.
pub const ACCEPTED_MANIFESTS: &[&str] = &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

/// Largest manifest or index accepted (the registries' own limit is 4 MiB).
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Largest image config accepted.
pub const MAX_CONFIG_BYTES: u64 = 8 << 20;

/// A content descriptor: what a manifest says about a blob.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<std::collections::BTreeMap<String, String>>,
}

/// An image manifest (OCI or Docker schema 2: the same shape).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// An image index or Docker manifest list.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    pub manifests: Vec<Descriptor>,
}

/// An operating system and CPU architecture, as in an index entry.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Default for Platform {
    /// linux/amd64.
    fn default() -> Self {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Platform {
    type Err = ImageError;
    /// `os/arch[/variant]`, e.g. `linux/arm64/v8`.
    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] => Ok(Platform {
                os: (*os).into(),
                architecture: (*arch).into(),
                variant: None,
            }),
            [os, arch, v] => Ok(Platform {
                os: (*os).into(),
                architecture: (*arch).into(),
                variant: Some((*v).into()),
            }),
            _ => Err(ImageError::Config(format!(
                "invalid platform {s:?}: expected os/arch[/variant]"
            ))),
        }
    }
}

impl Platform {
    /// Whether an index entry's platform satisfies this one (a missing wanted variant matches any).
    pub fn matches(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && match (&self.variant, &other.variant) {
                (Some(want), Some(have)) => want == have,
                (Some(want), None) => want == "v8" && self.architecture == "arm64",
                (None, _) => true,
            }
    }
}

/// A manifest document as fetched: either an image manifest or an index.
#[derive(Clone, Debug)]
pub enum Document {
    Manifest(Manifest),
    Index(Index),
}

impl Document {
    /// Parse a manifest or index, telling them apart by `mediaType` or, when it is absent (OCI
    /// allows that), by the presence of `manifests`.
    pub fn parse(bytes: &[u8], what: &str) -> Result<Document> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ImageError::BadManifest {
                what: what.into(),
                reason: format!(
                    "{} bytes, more than the limit of {MAX_MANIFEST_BYTES}",
                    bytes.len()
                ),
            });
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Probe {
            schema_version: Option<u32>,
            media_type: Option<String>,
            manifests: Option<serde_json::Value>,
        }
        let p: Probe = serde_json::from_slice(bytes).map_err(ImageError::json(what))?;
        if p.schema_version != Some(2) {
            return Err(ImageError::BadManifest {
                what: what.into(),
                reason: format!("unsupported schemaVersion {:?} (only 2)", p.schema_version),
            });
        }
        let is_index = match p.media_type.as_deref() {
            Some(OCI_INDEX | DOCKER_LIST) => true,
            Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
            Some(other) => {
                return Err(ImageError::BadManifest {
                    what: what.into(),
                    reason: format!("unsupported media type {other}"),
                })
            }
            None => p.manifests.is_some(),
        };
        if is_index {
            Ok(Document::Index(
                serde_json::from_slice(bytes).map_err(ImageError::json(what))?,
            ))
        } else {
            Ok(Document::Manifest(
                serde_json::from_slice(bytes).map_err(ImageError::json(what))?,
            ))
        }
    }
}

impl Index {
    /// The image-manifest entry for `platform`, or the only entry when none carries a platform.
    pub fn select(&self, platform: &Platform, index_digest: &Digest) -> Result<&Descriptor> {
        let candidates = self
            .manifests
            .iter()
            .filter(|d| matches!(d.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST | ""));
        let mut fallback = None;
        for d in candidates {
            match &d.platform {
                Some(p) if platform.matches(p) => return Ok(d),
                None if self.manifests.len() == 1 => fallback = Some(d),
                _ => {}
            }
        }
        fallback.ok_or_else(|| ImageError::NoPlatform {
            platform: platform.to_string(),
            digest: index_digest.to_string(),
        })
    }
}

/// Compression of a layer, detected from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// Detect by magic bytes: gzip `1f 8b`, zstd `28 b5 2f fd`, anything else is taken as tar.
    pub fn detect(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> String {
        format!("sha256:{}", hex::encode([n; 32]))
    }

    #[test]
    fn index_selects_platform() {
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_LIST}","manifests":[
            {{"mediaType":"{DOCKER_MANIFEST}","digest":"{}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},
            {{"mediaType":"{DOCKER_MANIFEST}","digest":"{}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
            d(1),
            d(2)
        );
        let Document::Index(ix) = Document::parse(json.as_bytes(), "t").unwrap() else {
            panic!()
        };
        let me = Digest::of(b"x");
        assert_eq!(
            ix.select(&Platform::default(), &me)
                .unwrap()
                .digest
                .as_str(),
            d(2)
        );
        let arm: Platform = "linux/arm64".parse().unwrap();
        assert_eq!(ix.select(&arm, &me).unwrap().digest.as_str(), d(1));
        let s390: Platform = "linux/s390x".parse().unwrap();
        assert!(matches!(
            ix.select(&s390, &me),
            Err(ImageError::NoPlatform { .. })
        ));
    }

    #[test]
    fn manifest_with_bad_digest_is_refused() {
        let json =
            r#"{"schemaVersion":2,"config":{"digest":"sha256:../../etc","size":1},"layers":[]}"#;
        assert!(Document::parse(json.as_bytes(), "t").is_err());
    }

    #[test]
    fn compression_by_magic() {
        assert_eq!(Compression::detect(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(Compression::detect(b"etc/\0\0"), Compression::None);
    }
}
