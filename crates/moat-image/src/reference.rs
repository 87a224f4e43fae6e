//! Image names: parsing and normalising references the way Docker does (`busybox` is
//! `docker.io/library/busybox:latest`), and deciding whether a registry may be reached over plain
//! HTTP (only loopback registries and those the caller lists as insecure).

use oci_client::Reference;

use crate::error::{ImageError, Result};

/// Parse `name` into a reference with Docker's defaults.
pub fn parse(name: &str) -> Result<Reference> {
    name.parse::<Reference>()
        .map_err(|e| ImageError::BadReference {
            reference: name.chars().take(256).collect(),
            reason: e.to_string(),
        })
}

/// The canonical form of `name`: `registry/repository:tag` or `registry/repository@digest`.
pub fn normalize(name: &str) -> Result<String> {
    Ok(parse(name)?.whole())
}

/// Whether `registry` (`host[:port]`) is on the loopback interface.
pub fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry.rsplit_once(':').map_or(registry, |(h, p)| {
            if p.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                registry
            }
        })
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether `registry` is reached over plain HTTP: only when it is on loopback or listed in
/// `insecure`.
pub fn plain_http(registry: &str, insecure: &[String]) -> bool {
    is_loopback(registry) || insecure.iter().any(|r| r == registry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_resolve_to_docker_library() {
        assert_eq!(
            normalize("busybox").unwrap(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalize("alpine:3.20").unwrap(),
            "docker.io/library/alpine:3.20"
        );
        assert_eq!(
            normalize("quay.io/podman/hello").unwrap(),
            "quay.io/podman/hello:latest"
        );
        assert_eq!(
            normalize("127.0.0.1:5000/a/b:t").unwrap(),
            "127.0.0.1:5000/a/b:t"
        );
        assert!(normalize("a/UPPER").is_err() && normalize("a b").is_err());
    }

    #[test]
    fn plain_http_only_for_loopback_and_listed() {
        assert!(plain_http("127.0.0.1:5000", &[]));
        assert!(plain_http("localhost:5000", &[]));
        assert!(plain_http("[::1]:5000", &[]));
        assert!(!plain_http("registry.example:5000", &[]));
        assert!(plain_http(
            "registry.example:5000",
            &["registry.example:5000".into()]
        ));
        assert!(!plain_http("docker.io", &[]));
    }
}
