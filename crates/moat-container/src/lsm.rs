//! Linux security modules for the container process: the AppArmor profile
//! (`process.apparmorProfile`) and the SELinux label (`process.selinuxLabel`), both applied at the
//! process's `execve` through /proc/self/attr. A requested AppArmor profile on a host without
//! AppArmor is an error (a silently missing confinement is a security bug); an SELinux label on a
//! host with SELinux disabled is ignored, as runc does.

use std::path::Path;

use crate::error::{InitFailure, Step};

/// Whether AppArmor is enabled on this host.
pub fn apparmor_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|s| s.trim_start().starts_with('Y'))
}

/// Whether SELinux is enabled on this host.
pub fn selinux_enabled() -> bool {
    Path::new("/sys/fs/selinux/enforce").exists()
}

/// Checks made by the runtime before anything is created.
pub fn check(process: &oci_spec::runtime::Process) -> Result<(), String> {
    if process
        .apparmor_profile()
        .as_ref()
        .is_some_and(|p| !p.is_empty())
        && !apparmor_enabled()
    {
        return Err(format!(
            "process.apparmorProfile {:?}: AppArmor is not enabled on this host (no /sys/module/apparmor); remove the profile or run on a host with AppArmor",
            process.apparmor_profile().as_deref().unwrap_or_default()
        ));
    }
    Ok(())
}

/// In the init, just before `execve`: request the exec-time transitions.
pub fn apply_at_exec(process: &oci_spec::runtime::Process) -> Result<(), InitFailure> {
    if let Some(profile) = process
        .apparmor_profile()
        .as_deref()
        .filter(|p| !p.is_empty())
    {
        // /proc/self/attr/apparmor/exec on kernels with LSM stacking, /proc/self/attr/exec before.
        let text = format!("exec {profile}");
        write_attr("apparmor/exec", &text)
            .or_else(|_| write_attr("exec", &text))
            .map_err(|e| {
                InitFailure::new(Step::Apparmor, format!("set AppArmor profile {profile}"), e)
            })?;
    }
    if let Some(label) = process.selinux_label().as_deref().filter(|l| !l.is_empty()) {
        if selinux_enabled() {
            write_attr("exec", label).map_err(|e| {
                InitFailure::new(Step::Apparmor, format!("set SELinux label {label}"), e)
            })?;
        }
    }
    Ok(())
}

/// Write an LSM attribute of the calling thread, making sure it lands in procfs: a /proc that the
/// bundle's mounts or the container replaced (a tmpfs, a bind) would take the write and leave the
/// process unconfined (runc's CVE-2019-16884). No O_CREAT, no following of a planted link, and
/// the file's filesystem must be proc.
fn write_attr(rel: &str, text: &str) -> nix::Result<()> {
    use nix::fcntl::OFlag;
    let path = format!("/proc/thread-self/attr/{rel}");
    let fd = nix::fcntl::open(
        path.as_str(),
        OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map(moat_sys::fd::owned)?;
    let fs = nix::sys::statfs::fstatfs(&fd)?;
    if fs.filesystem_type() != nix::sys::statfs::PROC_SUPER_MAGIC {
        return Err(nix::errno::Errno::EXDEV);
    }
    let n = nix::unistd::write(&fd, text.as_bytes())?;
    if n != text.len() {
        return Err(nix::errno::Errno::EIO);
    }
    Ok(())
}
