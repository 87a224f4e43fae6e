//! `moat-runtime spec`: write the hardened default config.json: the base in `data/spec.json`
//! (Docker's 14 default capabilities, masked and read-only paths, no_new_privs) plus the default
//! seccomp allowlist of `moat-seccomp` (Docker's profile), both reviewed data files; optionally
//! adapted for a rootless container.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

const DEFAULT_SPEC: &str = include_str!("data/spec.json");

pub fn default_spec(rootless: bool) -> Result<Value> {
    let mut spec: Value =
        serde_json::from_str(DEFAULT_SPEC).context("parse built-in default spec")?;
    spec["linux"]["seccomp"] = serde_json::from_str(moat_seccomp::DEFAULT_PROFILE_JSON)
        .context("parse built-in seccomp profile")?;
    if rootless {
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        let linux = &mut spec["linux"];
        linux["uidMappings"] = json!([{ "containerID": 0, "hostID": uid, "size": 1 }]);
        linux["gidMappings"] = json!([{ "containerID": 0, "hostID": gid, "size": 1 }]);
        linux["namespaces"] = json!([{ "type": "pid" }, { "type": "ipc" }, { "type": "uts" }, { "type": "mount" }, { "type": "cgroup" }, { "type": "user" }]);
        linux.as_object_mut().map(|o| o.remove("resources"));
        let mounts = spec["mounts"].as_array_mut().expect("mounts is an array");
        mounts.retain(|m| {
            m["destination"] != "/sys/fs/cgroup"
                && m["destination"] != "/dev/mqueue"
                && m["destination"] != "/sys"
        });
        mounts.push(json!({ "destination": "/sys", "type": "none", "source": "/sys", "options": ["rbind", "nosuid", "noexec", "nodev", "ro"] }));
        for m in mounts.iter_mut() {
            if m["destination"] == "/dev/pts" {
                m["options"] = json!([
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620"
                ]);
            }
        }
    }
    Ok(spec)
}

pub fn write_spec(bundle: &Path, rootless: bool) -> Result<()> {
    let path = bundle.join("config.json");
    if path.exists() {
        bail!(
            "write spec: {} already exists; remove it first",
            path.display()
        );
    }
    let spec = default_spec(rootless)?;
    std::fs::write(&path, serde_json::to_string_pretty(&spec)? + "\n")
        .with_context(|| format!("write spec {}", path.display()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_specs_parse_as_oci_specs() {
        for rootless in [false, true] {
            let v = super::default_spec(rootless).unwrap();
            let s: oci_spec::runtime::Spec = serde_json::from_value(v).unwrap();
            moat_container::spec::validate(&s).unwrap();
        }
    }
}
