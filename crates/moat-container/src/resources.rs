//! Applying `linux.resources` to the container's cgroup at create time. The cgroup crate enforces
//! every resource it knows or refuses it with the field named; nothing is silently ignored.

use oci_spec::runtime::Spec;

use crate::error::{ContainerError, Result};

pub fn apply(cgroup: &moat_cgroups::Cgroup, spec: &Spec) -> Result<()> {
    let Some(res) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) else {
        return Ok(());
    };
    let _ = cgroup;
    // Interim: until resource control lands, refuse any limit rather than ignore it.
    let json = serde_json::to_value(res).unwrap_or_default();
    if let Some(obj) = json.as_object() {
        for (k, v) in obj {
            let empty = v.is_null()
                || v.as_array().is_some_and(|a| a.is_empty())
                || v.as_object().is_some_and(|o| o.is_empty());
            if !empty && k != "devices" {
                return Err(ContainerError::Unsupported(format!(
                    "linux.resources.{k}: resource limits are not supported by this moat build yet"
                )));
            }
        }
    }
    Ok(())
}
