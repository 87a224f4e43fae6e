//! `moat-runtime spec`: write the hardened default config.json (`moat_container::defaults`: Docker's
//! 14 default capabilities, masked and read-only paths, no_new_privs and the default seccomp
//! allowlist), optionally adapted for a rootless container.

use std::path::Path;

use anyhow::{bail, Context, Result};

pub fn write_spec(bundle: &Path, rootless: bool) -> Result<()> {
    let path = bundle.join("config.json");
    if path.exists() {
        bail!(
            "write spec: {} already exists; remove it first",
            path.display()
        );
    }
    let spec = moat_container::defaults::default_spec_json(rootless)?;
    std::fs::write(&path, serde_json::to_string_pretty(&spec)? + "\n")
        .with_context(|| format!("write spec {}", path.display()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_specs_parse_as_oci_specs() {
        for rootless in [false, true] {
            let v = moat_container::defaults::default_spec_json(rootless).unwrap();
            let s: oci_spec::runtime::Spec = serde_json::from_value(v).unwrap();
            moat_container::spec::validate(&s).unwrap();
        }
    }
}
