//! Registry credentials from the auth files that Docker, Podman and skopeo write, searched in
//! order: `$REGISTRY_AUTH_FILE`, `${XDG_RUNTIME_DIR}/containers/auth.json`,
//! `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`. The first file with an entry for the
//! registry wins; within a file the most specific key (`registry/namespace/repo` over `registry`)
//! wins. Entries hold `base64(user:password)` in `auth` (or `username`/`password`). Credential
//! helpers (`credsStore`, `credHelpers`) are not run. Bearer tokens are then obtained by the
//! registry client from these credentials (the Docker token flow); without an entry the pull is
//! anonymous.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use crate::error::{ImageError, Result};

/// The auth files to search, in order, from the environment.
pub fn default_auth_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE") {
        out.push(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("XDG_RUNTIME_DIR") {
        out.push(Path::new(&p).join("containers/auth.json"));
    }
    if let Some(p) = std::env::var_os("DOCKER_CONFIG") {
        out.push(Path::new(&p).join("config.json"));
    } else if let Some(h) = std::env::var_os("HOME") {
        out.push(Path::new(&h).join(".docker/config.json"));
    }
    out
}

#[derive(Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, Entry>,
}

#[derive(Deserialize)]
struct Entry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// Strip a scheme and a `/v1/`-style suffix and fold Docker Hub's aliases into `docker.io`.
fn normalize_key(key: &str) -> String {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let k = k.trim_end_matches('/');
    let k = k
        .strip_suffix("/v1")
        .or_else(|| k.strip_suffix("/v2"))
        .unwrap_or(k);
    fold_hub(k)
}

fn fold_hub(s: &str) -> String {
    for alias in ["index.docker.io", "registry-1.docker.io"] {
        if let Some(rest) = s.strip_prefix(alias) {
            if rest.is_empty() || rest.starts_with('/') {
                return format!("docker.io{rest}");
            }
        }
    }
    s.to_owned()
}

/// Credentials for `registry`/`repository` from the first of `files` that has them.
pub fn lookup(files: &[PathBuf], registry: &str, repository: &str) -> Result<RegistryAuth> {
    let registry = fold_hub(registry);
    let full = format!("{registry}/{repository}");
    for path in files {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(ImageError::AuthFile {
                    path: path.clone(),
                    reason: e.to_string(),
                })
            }
        };
        let file: AuthFile = serde_json::from_slice(&bytes).map_err(|e| ImageError::AuthFile {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let best = file
            .auths
            .iter()
            .map(|(k, v)| (normalize_key(k), v))
            .filter(|(k, _)| *k == registry || full == *k || full.starts_with(&format!("{k}/")))
            .max_by_key(|(k, _)| k.len());
        let Some((key, entry)) = best else { continue };
        let bad = |reason: &str| ImageError::AuthFile {
            path: path.clone(),
            reason: format!("entry {key}: {reason}"),
        };
        if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
            return Ok(RegistryAuth::Basic(u.clone(), p.clone()));
        }
        let Some(auth) = &entry.auth else { continue };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| bad("auth is not base64"))?;
        let decoded = String::from_utf8(decoded).map_err(|_| bad("auth is not UTF-8"))?;
        let (u, p) = decoded
            .split_once(':')
            .ok_or_else(|| bad("auth is not user:password"))?;
        return Ok(RegistryAuth::Basic(u.to_owned(), p.to_owned()));
    }
    Ok(RegistryAuth::Anonymous)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn most_specific_entry_of_first_file_wins() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a.json");
        let b = d.path().join("b.json");
        std::fs::write(
            &a,
            format!(
                r#"{{"auths":{{"quay.io":{{"auth":"{}"}},"quay.io/org":{{"auth":"{}"}}}}}}"#,
                b64("u1:p1"),
                b64("u2:p:2")
            ),
        )
        .unwrap();
        std::fs::write(
            &b,
            format!(
                r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{}"}}}}}}"#,
                b64("hub:pw")
            ),
        )
        .unwrap();
        let files = vec![d.path().join("missing.json"), a, b];
        assert_eq!(
            lookup(&files, "quay.io", "org/repo").unwrap(),
            RegistryAuth::Basic("u2".into(), "p:2".into())
        );
        assert_eq!(
            lookup(&files, "quay.io", "other/repo").unwrap(),
            RegistryAuth::Basic("u1".into(), "p1".into())
        );
        assert_eq!(
            lookup(&files, "docker.io", "library/busybox").unwrap(),
            RegistryAuth::Basic("hub".into(), "pw".into())
        );
        assert_eq!(
            lookup(&files, "ghcr.io", "x/y").unwrap(),
            RegistryAuth::Anonymous
        );
    }

    #[test]
    fn malformed_file_names_itself() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a.json");
        std::fs::write(&a, "{not json").unwrap();
        let e = lookup(std::slice::from_ref(&a), "quay.io", "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains(&a.display().to_string()), "{e}");
    }
}
