//! `moat login` / `moat logout`: credentials for a registry, written where moat (and podman,
//! skopeo, docker) read them: the first of `$REGISTRY_AUTH_FILE`,
//! `${XDG_RUNTIME_DIR}/containers/auth.json`, `$DOCKER_CONFIG/config.json` or
//! `~/.docker/config.json` (`moat_image::auth::default_auth_files`). The file is rewritten
//! atomically with mode 0600. The credentials are not checked against the registry here; the
//! next pull uses them.

use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::Engine;
use serde_json::{json, Value};

use crate::error::{CliError, Result};

fn read(file: &Path) -> Result<Value> {
    match std::fs::read(file) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| CliError::Usage(format!("parse {}: {e}", file.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(json!({})),
        Err(e) => Err(CliError::Io {
            what: "read",
            path: file.into(),
            source: e,
        }),
    }
}

fn write(file: &Path, v: &Value) -> Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(CliError::io("create", dir))?;
    }
    let tmp = file.with_extension("moat-tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(CliError::io("write", &tmp))?;
        std::io::Write::write_all(
            &mut f,
            serde_json::to_string_pretty(v)
                .unwrap_or_default()
                .as_bytes(),
        )
        .map_err(CliError::io("write", &tmp))?;
    }
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .map_err(CliError::io("chmod", &tmp))?;
    std::fs::rename(&tmp, file).map_err(CliError::io("rename", file))
}

/// Record `user:password` for `registry` in `file`.
pub fn store(file: &Path, registry: &str, user: &str, password: &str) -> Result<()> {
    let mut v = read(file)?;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    if !v["auths"].is_object() {
        v["auths"] = json!({});
    }
    v["auths"][registry] = json!({ "auth": auth });
    write(file, &v)
}

/// Forget `registry` in `file`; false when it had no entry.
pub fn forget(file: &Path, registry: &str) -> Result<bool> {
    let mut v = read(file)?;
    let removed = v["auths"]
        .as_object_mut()
        .and_then(|a| a.remove(registry))
        .is_some();
    if removed {
        write(file, &v)?;
    }
    Ok(removed)
}

fn auth_file() -> Result<std::path::PathBuf> {
    moat_image::auth::default_auth_files()
        .into_iter()
        .next()
        .ok_or_else(|| {
            CliError::Usage("no credentials file: set REGISTRY_AUTH_FILE or HOME".into())
        })
}

/// `moat login`.
pub fn login(
    registry: &str,
    user: Option<&str>,
    password: Option<&str>,
    password_stdin: bool,
) -> Result<()> {
    let user = user.ok_or_else(|| CliError::Usage(format!("login {registry}: give --username")))?;
    let password = if password_stdin {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(CliError::io("read", "stdin"))?;
        s.trim_end_matches(['\n', '\r']).to_owned()
    } else {
        password
            .ok_or_else(|| {
                CliError::Usage(format!(
                    "login {registry}: give --password-stdin (or --password)"
                ))
            })?
            .to_owned()
    };
    let file = auth_file()?;
    store(&file, registry, user, &password)?;
    eprintln!("credentials for {registry} stored in {}", file.display());
    Ok(())
}

/// `moat logout`.
pub fn logout(registry: &str) -> Result<()> {
    let file = auth_file()?;
    if !forget(&file, registry)? {
        return Err(CliError::Usage(format!(
            "logout {registry}: no credentials for it in {}",
            file.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn stored_credentials_are_found_by_pulls_and_forgotten() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("containers/auth.json");
        super::store(&f, "127.0.0.1:5000", "alice", "s3cret").unwrap();
        super::store(&f, "other.example", "bob", "pw").unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let auth =
            moat_image::auth::lookup(std::slice::from_ref(&f), "127.0.0.1:5000", "x/y").unwrap();
        assert!(format!("{auth:?}").contains("alice"), "{auth:?}");
        assert!(super::forget(&f, "127.0.0.1:5000").unwrap());
        assert!(!super::forget(&f, "127.0.0.1:5000").unwrap());
        let auth = moat_image::auth::lookup(&[f], "127.0.0.1:5000", "x/y").unwrap();
        assert!(!format!("{auth:?}").contains("alice"), "{auth:?}");
    }
}
