//! Image names: parsing and normalising references the way Docker does (`busybox` is
//! `docker.io/library/busybox:latest`), and deciding whether a registry may be reached over plain
//! HTTP (only loopback registries and those the caller lists as insecure).
//!
//! Parsed by hand, not with `oci_client::Reference`'s `FromStr`: that one compiles a large
//! Unicode-aware regex on first use, 40-60 ms of CPU in every `moat` command that names an
//! image (measured: `moat image inspect NAME` 70-160 ms against 10 ms for `moat images`). The
//! grammar is Docker's (distribution/reference), the same as the regex's but with an ASCII `\w`
//! in tags as Go's; a test checks that both agree on every other input.

use oci_client::Reference;

use crate::error::{ImageError, Result};

/// The longest repository name (with Docker Hub's `library/` prefix).
const NAME_TOTAL_LENGTH_MAX: usize = 255;

/// Parse `name` into a reference with Docker's defaults.
pub fn parse(name: &str) -> Result<Reference> {
    parse_reference(name).map_err(|reason| ImageError::BadReference {
        reference: name.chars().take(256).collect(),
        reason: reason.into(),
    })
}

fn parse_reference(s: &str) -> std::result::Result<Reference, &'static str> {
    if s.is_empty() {
        return Err("repository name must have at least one component");
    }
    const INVALID: &str = "invalid reference format";
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (s, None),
    };
    // A `:` with no `/` after it starts the tag; one before a `/` ends a registry host.
    let (name, tag) = match rest.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n, Some(t)),
        _ => (rest, None),
    };
    if !valid_name(name) || !tag.is_none_or(valid_tag) || !digest.is_none_or(valid_digest) {
        return Err(INVALID);
    }
    let (registry, repository) = split_domain(name);
    if repository.len() > NAME_TOTAL_LENGTH_MAX {
        return Err("repository name must not be more than 255 characters");
    }
    if let Some((algorithm, hex)) = digest.and_then(|d| d.split_once(':')) {
        let want = match algorithm {
            "sha256" => 64,
            "sha384" => 96,
            "sha512" => 128,
            _ => return Err("unsupported digest algorithm"),
        };
        if hex.len() != want {
            return Err("invalid checksum digest length");
        }
    }
    Ok(match (tag, digest) {
        (Some(t), Some(d)) => {
            Reference::with_tag_and_digest(registry, repository, t.into(), d.into())
        }
        (None, Some(d)) => Reference::with_digest(registry, repository, d.into()),
        (t, None) => Reference::with_tag(registry, repository, t.unwrap_or("latest").into()),
    })
}

/// `[host[:port]/]component(/component)*`: components lowercase alphanumerics joined by `.`,
/// `_`, `__` or dashes; a host is dot-separated alphanumerics with inner dashes.
fn valid_name(name: &str) -> bool {
    let mut parts = name.split('/');
    let first = parts.next().unwrap_or("");
    let rest: Vec<&str> = parts.collect();
    if rest.iter().any(|c| !valid_component(c)) {
        return false;
    }
    valid_component(first) || (!rest.is_empty() && valid_host(first))
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

fn valid_host(h: &str) -> bool {
    let (host, port) = match h.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (h, None),
    };
    let label = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
    };
    host.split('.').all(label)
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|x| x.is_ascii_digit()))
}

fn valid_tag(t: &str) -> bool {
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b.iter().all(|x| word(*x) || *x == b'.' || *x == b'-')
}

/// `algorithm:hex` with at least 32 hex digits; the algorithm is letters and digits, starting
/// with a letter, in parts joined by `-`, `_`, `+` or `.`.
fn valid_digest(d: &str) -> bool {
    let Some((algorithm, hex)) = d.split_once(':') else {
        return false;
    };
    let part = |p: &str| {
        p.as_bytes().first().is_some_and(u8::is_ascii_alphabetic)
            && p.bytes().all(|x| x.is_ascii_alphanumeric())
    };
    algorithm.split(['-', '_', '+', '.']).all(part)
        && hex.len() >= 32
        && hex.bytes().all(|x| x.is_ascii_hexdigit())
}

/// Docker's split of a name into registry and repository: the first component is a registry
/// if it has a `.` or `:` or is `localhost`; Docker Hub's single names are under `library/`.
fn split_domain(name: &str) -> (String, String) {
    let (mut domain, mut remainder) = match name.split_once('/') {
        Some((left, right)) if left.contains(['.', ':']) || left == "localhost" => {
            (left.to_string(), right.to_string())
        }
        _ => ("docker.io".to_string(), name.to_string()),
    };
    if domain == "index.docker.io" {
        domain = "docker.io".into();
    }
    if domain == "docker.io" && !remainder.contains('/') {
        remainder = format!("library/{remainder}");
    }
    (domain, remainder)
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

    /// The hand-written parser agrees with oci-client's regex on names of every shape: known
    /// cases and 200 000 pseudo-random strings over the grammar's characters.
    #[test]
    fn agrees_with_the_regex_parser() {
        let mut cases: Vec<String> = [
            "busybox",
            "test.com:tag",
            "test.com:5000",
            "test.com/repo:tag",
            "test:5000/repo",
            "test:5000/repo:tag",
            "lowercase:Uppercase",
            "sub-dom1.foo.com/bar/baz/quux",
            "sub-dom1.foo.com/bar/baz/quux:some-long-tag",
            "b.gcr.io/test.example.com/my-app:test.example.com",
            "xn--n3h.com/myimage:xn--n3h.com",
            "Uppercase:tag",
            "foo_bar.com:8080",
            "foo/foo_bar.com:8080",
            "a/a__b",
            "a/a___b",
            "a/a--b-c",
            "a/.a",
            "a/a.",
            "a//b",
            "localhost/x",
            "localhost:5000/x",
            "index.docker.io/x",
            "index.docker.io/x/y",
            "a@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "a:t@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "a@sha256:fff",
            "a@md5:ffffffffffffffffffffffffffffffff",
            "a@sha256+b64:ffffffffffffffffffffffffffffffff",
            "a@s-1:ffffffffffffffffffffffffffffffff",
            "-a",
            "a-",
            "a/-b",
            "[::1]:5000/x",
            ":tag",
            "a:",
            "/a",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        cases.push(format!("a:{}", "t".repeat(128)));
        cases.push(format!("a:{}", "t".repeat(129)));
        cases.push(format!("h.io/{}", "a".repeat(255)));
        cases.push("a".repeat(250));
        let alphabet = b"ab0.-_:/@A9fe";
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = 1 + (x % 12) as usize;
            let mut y = x;
            let s: String = (0..len)
                .map(|_| {
                    y = y
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    alphabet[(y >> 33) as usize % alphabet.len()] as char
                })
                .collect();
            cases.push(s);
        }
        let mut valid = 0;
        for c in &cases {
            let ours = parse_reference(c).ok();
            let theirs = c.parse::<Reference>().ok();
            valid += usize::from(theirs.is_some());
            assert_eq!(ours, theirs, "{c:?}");
        }
        // Not a comparison of rejections only.
        assert!(valid > 10_000, "only {valid} valid names generated");
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
