//! Loading and validating a bundle's `config.json`. Parse errors name the JSON field
//! (`linux.namespaces[2].type`) thanks to `serde_path_to_error`; semantic checks that the type
//! system cannot express (a mount namespace is required, namespaces appear once, destinations are
//! absolute) are made here, before anything is created on the host.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::error::{ContainerError, Result};

/// A loaded, validated bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Absolute path of the bundle directory.
    pub dir: PathBuf,
    pub spec: Spec,
    /// Absolute path of the root filesystem.
    pub rootfs: PathBuf,
}

/// Read `<bundle>/config.json`, parse it and check it.
pub fn load_bundle(bundle: &Path) -> Result<Bundle> {
    let dir = std::path::absolute(bundle).map_err(|source| ContainerError::Io {
        what: "resolve bundle",
        path: bundle.into(),
        source,
    })?;
    let path = dir.join("config.json");
    let data = std::fs::read(&path).map_err(|source| ContainerError::ReadConfig {
        path: path.clone(),
        source,
    })?;
    let spec = parse_spec(&data).map_err(|(field, message)| ContainerError::ParseConfig {
        path: path.clone(),
        field,
        message,
    })?;
    validate(&spec)?;
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| invalid("root", "missing: the bundle must name its root filesystem"))?;
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        dir.join(root.path())
    };
    let meta = std::fs::metadata(&rootfs)
        .map_err(|e| invalid("root.path", &format!("{}: {e}", rootfs.display())))?;
    if !meta.is_dir() {
        return Err(invalid(
            "root.path",
            &format!("{} is not a directory", rootfs.display()),
        ));
    }
    Ok(Bundle { dir, spec, rootfs })
}

/// Parse config.json bytes; on error return (field path, message).
pub fn parse_spec(data: &[u8]) -> std::result::Result<Spec, (String, String)> {
    let mut v: serde_json::Value =
        serde_json::from_slice(data).map_err(|e| ("config".to_owned(), e.to_string()))?;
    if let Some(p) = v.get_mut("process") {
        crate::sched::spec_flag_names(p);
    }
    serde_path_to_error::deserialize::<_, Spec>(v).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." {
            "config".to_owned()
        } else {
            field
        };
        (field, e.into_inner().to_string())
    })
}

fn invalid(field: &str, message: &str) -> ContainerError {
    ContainerError::InvalidConfig {
        field: field.into(),
        message: message.into(),
    }
}

/// The newest runtime-spec minor version of major 1 that moat implements.
const NEWEST_MINOR: u64 = 2;

/// `ociVersion` must be a semantic version (`1.0.2-dev`, `1.1.0-rc.1`, `1.2.0`) of a runtime-spec
/// release moat implements: major 1, minor at most [`NEWEST_MINOR`]. A newer minor may carry
/// fields this runtime would not know to apply, so it is refused rather than half-honoured.
pub fn check_oci_version(v: &str) -> std::result::Result<(), String> {
    let core = v.split(['-', '+']).next().unwrap_or_default();
    let nums: Vec<Option<u64>> = core
        .split('.')
        .map(|n| {
            (!n.is_empty()
                && n.bytes().all(|b| b.is_ascii_digit())
                && (n == "0" || !n.starts_with('0')))
            .then(|| n.parse().ok())
            .flatten()
        })
        .collect();
    let tail_ok = v[core.len()..]
        .split(['-', '+', '.'])
        .all(|p| p.bytes().all(|b| b.is_ascii_alphanumeric()));
    let (major, minor) = match nums.as_slice() {
        [Some(a), Some(b), Some(_)]
            if tail_ok && (v.len() == core.len() || v.len() > core.len() + 1) =>
        {
            (*a, *b)
        }
        _ => return Err(format!("{v:?} is not a semantic version (like \"1.2.0\")")),
    };
    if major != 1 || minor > NEWEST_MINOR {
        return Err(format!(
            "{v:?} is not supported: moat implements runtime-spec 1.0 to 1.{NEWEST_MINOR}"
        ));
    }
    Ok(())
}

/// Checks the type system does not make.
pub fn validate(spec: &Spec) -> Result<()> {
    check_oci_version(spec.version()).map_err(|m| invalid("ociVersion", &m))?;
    if spec.root().is_none() {
        return Err(invalid(
            "root",
            "missing: the bundle must name its root filesystem",
        ));
    }
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| invalid("process", "missing"))?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(invalid("process.args", "must name the program to run"));
    }
    if !process.cwd().is_absolute() {
        return Err(invalid("process.cwd", "must be an absolute path"));
    }
    let linux = spec
        .linux()
        .as_ref()
        .ok_or_else(|| invalid("linux", "missing"))?;
    let mut seen = HashSet::new();
    let namespaces = linux.namespaces().clone().unwrap_or_default();
    for (i, ns) in namespaces.iter().enumerate() {
        if !seen.insert(ns.typ()) {
            return Err(invalid(
                &format!("linux.namespaces[{i}]"),
                &format!(
                    "namespace {:?} is listed twice",
                    crate::namespaces::type_name(ns.typ())
                ),
            ));
        }
        if let Some(p) = crate::namespaces::ns_path(ns) {
            if !p.is_absolute() {
                return Err(invalid(
                    &format!("linux.namespaces[{i}].path"),
                    "must be an absolute path",
                ));
            }
        }
    }
    if !seen.contains(&LinuxNamespaceType::Mount) {
        return Err(invalid("linux.namespaces", "a mount namespace is required"));
    }
    let has_userns = seen.contains(&LinuxNamespaceType::User);
    if !has_userns
        && (linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
            || linux.gid_mappings().as_ref().is_some_and(|m| !m.is_empty()))
    {
        return Err(invalid(
            "linux.uidMappings",
            "mappings are given but there is no user namespace",
        ));
    }
    let new_userns = namespaces
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::User && crate::namespaces::ns_path(n).is_none());
    if new_userns && linux.uid_mappings().as_ref().is_none_or(|m| m.is_empty()) {
        return Err(invalid(
            "linux.uidMappings",
            "a new user namespace needs uidMappings and gidMappings",
        ));
    }
    if linux.time_offsets().as_ref().is_some_and(|t| !t.is_empty())
        && !seen.contains(&LinuxNamespaceType::Time)
    {
        return Err(invalid(
            "linux.timeOffsets",
            "time offsets need a time namespace",
        ));
    }
    for (i, m) in spec.mounts().clone().unwrap_or_default().iter().enumerate() {
        if !m.destination().is_absolute() {
            return Err(invalid(
                &format!("mounts[{i}].destination"),
                &format!("{:?} must be an absolute path", m.destination()),
            ));
        }
        for o in m.options().clone().unwrap_or_default() {
            if crate::mountopts::parse_option(&o).is_none() {
                return Err(invalid(
                    &format!("mounts[{i}].options"),
                    &format!("unknown mount option {o:?}"),
                ));
            }
        }
    }
    if let Some(p) = linux.rootfs_propagation() {
        if crate::mountopts::propagation(p).is_none() {
            return Err(invalid(
                "linux.rootfsPropagation",
                &format!("unknown propagation {p:?}"),
            ));
        }
    }
    crate::sched::validate(spec)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_oci_version;

    #[test]
    fn oci_versions() {
        for ok in [
            "1.0.0",
            "1.0.2-dev",
            "1.1.0-rc.1",
            "1.2.0",
            "1.2.1",
            "1.0.0+build.5",
        ] {
            assert_eq!(check_oci_version(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "1",
            "1.0",
            "v1.0.0",
            "1.0.0-",
            "1.x.0",
            "01.0.0",
            "1.0.0 ",
            "1.0.0-d_v",
        ] {
            let e = check_oci_version(bad).unwrap_err();
            assert!(e.contains("not a semantic version"), "{bad}: {e}");
        }
        for unsupported in ["0.5.0", "2.0.0", "1.3.0"] {
            let e = check_oci_version(unsupported).unwrap_err();
            assert!(e.contains("not supported"), "{unsupported}: {e}");
        }
    }
}
