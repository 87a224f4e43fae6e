//! The pod's settings in the guest ([`moat_agent_proto::Request::Pod`]): a pod VM's containers
//! share the agent's UTS, IPC and network namespaces (the guest is the pod: there is no pause
//! process), so the sandbox's hostname and sysctls are set here, in the agent's own namespaces,
//! before its containers start.
//!
//! What it must never do: set a sysctl that no namespace of the pod holds (a global of the
//! guest kernel, such as `kernel.modprobe`), or write outside /proc/sys. The classes of
//! namespaced sysctls are runc's (`libcontainer/configs/validate`).

use moat_agent_proto::PodSettings;

use crate::error::{AgentFailure, Result};

/// The sysctls of the IPC namespace (besides `fs.mqueue.*`).
const IPC_SYSCTLS: &[&str] = &[
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];
/// The sysctls of the UTS namespace.
const UTS_SYSCTLS: &[&str] = &["kernel.domainname", "kernel.hostname"];

/// Which namespace of the pod holds sysctl `key` (dotted form), or why it is refused.
fn namespace_of(key: &str) -> std::result::Result<&'static str, String> {
    if IPC_SYSCTLS.contains(&key) || key.starts_with("fs.mqueue.") {
        Ok("ipc")
    } else if UTS_SYSCTLS.contains(&key) {
        Ok("uts")
    } else if key.starts_with("net.") {
        Ok("network")
    } else {
        Err(format!(
            "sysctl {key}: not in a namespace of the pod (a global of the guest kernel), \
             refused as runc refuses it"
        ))
    }
}

/// `key` (`a.b.c`, or `a/b/c` where a component holds a dot, such as an interface `eth0.100`)
/// as a path below /proc/sys and in dotted form; refused unless every component is a plain name.
fn sysctl_path(key: &str) -> Result<(String, String)> {
    let parts: Vec<&str> = if key.contains('/') {
        key.split('/').collect()
    } else {
        key.split('.').collect()
    };
    let plain = |p: &&str| {
        !p.is_empty()
            && *p != "."
            && *p != ".."
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.:+@".contains(&b))
    };
    if !parts.iter().all(plain) {
        return Err(AgentFailure::Invalid(format!("sysctl name {key:?}")));
    }
    Ok((parts.join("/"), parts.join(".")))
}

/// Set the pod's hostname, then its sysctls (all of them checked before any is written).
pub fn apply(s: &PodSettings) -> Result<()> {
    let mut writes = Vec::new();
    for (key, value) in &s.sysctls {
        let (path, dotted) = sysctl_path(key)?;
        namespace_of(&dotted).map_err(AgentFailure::Invalid)?;
        writes.push((format!("/proc/sys/{path}"), value));
    }
    if let Some(h) = &s.hostname {
        if h.is_empty() || h.len() > 64 {
            return Err(AgentFailure::Invalid(format!("hostname {h:?}")));
        }
        nix::unistd::sethostname(h).map_err(|errno| AgentFailure::Sys {
            what: format!("set the pod's hostname {h}"),
            errno,
        })?;
    }
    for (path, value) in writes {
        std::fs::write(&path, value.as_bytes())
            .map_err(|e| AgentFailure::io("set the pod's sysctl", &path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaced_sysctls_pass_and_globals_are_refused() {
        for k in [
            "kernel.shm_rmid_forced",
            "fs.mqueue.msg_max",
            "net.ipv4.ip_forward",
            "kernel.hostname",
        ] {
            assert!(namespace_of(k).is_ok(), "{k}");
        }
        for k in ["kernel.modprobe", "vm.overcommit_memory", "fs.file-max"] {
            let e = namespace_of(k).unwrap_err();
            assert!(e.contains(k) && e.contains("global"), "{e}");
        }
    }

    #[test]
    fn sysctl_names_become_paths_below_proc_sys() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward").unwrap().0,
            "net/ipv4/ip_forward"
        );
        let (p, d) = sysctl_path("net/ipv4/conf/eth0.100/forwarding").unwrap();
        assert_eq!(p, "net/ipv4/conf/eth0.100/forwarding");
        assert_eq!(d, "net.ipv4.conf.eth0.100.forwarding");
        for bad in [
            "",
            "net..x",
            "net/../../etc",
            "/net/x",
            "net.ipv4/ x",
            "a/./b",
        ] {
            assert!(sysctl_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_global_sysctl_is_refused_before_anything_is_set() {
        let s = PodSettings {
            hostname: Some("x".repeat(65)),
            sysctls: vec![("kernel.core_pattern".into(), "|/x".into())],
        };
        let e = apply(&s).unwrap_err().to_string();
        assert!(e.contains("kernel.core_pattern"), "{e}");
    }
}
