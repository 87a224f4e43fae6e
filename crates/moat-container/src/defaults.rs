//! The hardened default runtime spec, shared by every front end that builds a spec itself
//! (`moat-runtime spec`, the high-level `moat run`): the base in `data/default-spec.json`
//! (Docker's 14 default capabilities, masked and read-only paths, no_new_privs, a deny-all device
//! cgroup) plus the default seccomp allowlist of `moat-seccomp` (Docker's profile). Both are
//! reviewed data files; this module only assembles them and never weakens them.

use oci_spec::runtime::Spec;
use serde_json::{json, Value};

use crate::error::{ContainerError, Result};

const DEFAULT_SPEC: &str = include_str!("data/default-spec.json");

fn builtin(what: &str, e: serde_json::Error) -> ContainerError {
    ContainerError::InvalidConfig {
        field: format!("built-in {what}"),
        message: e.to_string(),
    }
}

/// The default spec as JSON; `rootless` adapts it for a container in a user namespace mapping the
/// calling user to root (no cgroup limits, the host's /sys bound read-only).
pub fn default_spec_json(rootless: bool) -> Result<Value> {
    let mut spec: Value =
        serde_json::from_str(DEFAULT_SPEC).map_err(|e| builtin("default spec", e))?;
    spec["linux"]["seccomp"] = serde_json::from_str(moat_seccomp::DEFAULT_PROFILE_JSON)
        .map_err(|e| builtin("seccomp profile", e))?;
    if rootless {
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        let linux = &mut spec["linux"];
        linux["uidMappings"] = json!([{ "containerID": 0, "hostID": uid, "size": 1 }]);
        linux["gidMappings"] = json!([{ "containerID": 0, "hostID": gid, "size": 1 }]);
        linux["namespaces"] = json!([{ "type": "pid" }, { "type": "ipc" }, { "type": "uts" }, { "type": "mount" }, { "type": "cgroup" }, { "type": "user" }]);
        if let Some(o) = linux.as_object_mut() {
            o.remove("resources");
        }
        if let Some(mounts) = spec["mounts"].as_array_mut() {
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
    }
    Ok(spec)
}

/// The default spec, typed.
pub fn default_spec(rootless: bool) -> Result<Spec> {
    serde_json::from_value(default_spec_json(rootless)?).map_err(|e| builtin("default spec", e))
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_specs_parse_and_validate() {
        for rootless in [false, true] {
            let s = super::default_spec(rootless).unwrap();
            crate::spec::validate(&s).unwrap();
            assert!(s.linux().as_ref().unwrap().seccomp().is_some());
        }
    }
}
