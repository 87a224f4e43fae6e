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
