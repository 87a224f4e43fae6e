//! Id maps a rootless runtime cannot write itself: `newuidmap`/`newgidmap` (shadow's setuid
//! helpers, Debian package `uidmap`) write them after checking the ranges against /etc/subuid and
//! /etc/subgid.

use oci_spec::runtime::LinuxIdMapping;

use crate::error::{ContainerError, Result};

/// Run `helper` (newuidmap or newgidmap) for `pid` with `maps`; an error names the helper, the
/// maps and what it printed.
pub(crate) fn run_helper(helper: &str, pid: i32, maps: &[LinuxIdMapping]) -> Result<()> {
    let mut cmd = std::process::Command::new(helper);
    cmd.arg(pid.to_string());
    for m in maps {
        cmd.args([
            m.container_id().to_string(),
            m.host_id().to_string(),
            m.size().to_string(),
        ]);
    }
    let field = if helper == "newuidmap" {
        "linux.uidMappings"
    } else {
        "linux.gidMappings"
    };
    let out = cmd.output().map_err(|e| ContainerError::InvalidConfig {
        field: field.into(),
        message: format!(
            "a rootless container mapping other ids than the caller's needs {helper} \
             (package uidmap): {e}"
        ),
    })?;
    if !out.status.success() {
        return Err(ContainerError::InvalidConfig {
            field: field.into(),
            message: format!(
                "{helper} {pid} refused the map ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(())
}
