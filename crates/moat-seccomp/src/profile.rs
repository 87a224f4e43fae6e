//! The default seccomp profile, kept as data in `data/default.json` (see `data/README.md` for
//! where it comes from and how it differs from Docker's).
//!
//! What it must never do: hold policy as code. Change the JSON, not this file.

use oci_spec::runtime::LinuxSeccomp;

/// The default profile, as OCI `linux.seccomp` JSON.
pub const DEFAULT_PROFILE_JSON: &str = include_str!("../data/default.json");

/// The default profile: deny (EPERM) everything but Docker's allowlist for the default
/// capability set.
pub fn default_profile() -> LinuxSeccomp {
    // The file is part of the crate and checked by the tests; a parse failure is a build defect.
    serde_json::from_str(DEFAULT_PROFILE_JSON).expect("data/default.json is valid linux.seccomp")
}

/// A profile allowing exactly the system calls `names` (without argument conditions), every
/// other one failing with `errno`: the filter a helper process of moat's own puts on itself.
pub fn allow_only(names: &[&str], errno: u32) -> LinuxSeccomp {
    let json = serde_json::json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": errno,
        "syscalls": [{ "names": names, "action": "SCMP_ACT_ALLOW" }],
    });
    // Built from a fixed shape; a parse failure is a build defect.
    serde_json::from_value(json).expect("an allow-list is valid linux.seccomp")
}
