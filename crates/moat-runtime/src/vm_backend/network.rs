//! The network of a VM container, from its spec's network namespace: a `path` (what podman, CNI
//! or a test made) is joined by the VM (`moat_vm::net::attach`: a tap per interface, tc
//! redirects, QEMU inside, the guest configured by the agent alike); no path gives the VM a
//! fresh, empty namespace (loopback only in the guest); no network namespace at all (the host's
//! network) is refused, since a VM cannot share the host's network stack.
//!
//! In the guest the container shares the VM's network namespace (the VM *is* the container's
//! network namespace), so the network entry is dropped from the config the agent gets.
//!
//! What it must never do: let the guest reach the host's network stack, or leave a tap or tc
//! qdisc behind (`vm.json` records them before QEMU starts; `destroy` removes them).

use std::path::PathBuf;

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use serde::{Deserialize, Serialize};

use super::error::{Result, VmBackendError};

/// Where the VM's network comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum NetPlan {
    /// A new, empty network namespace: loopback only.
    Fresh,
    /// Join the interfaces of this network namespace.
    Join(PathBuf),
}

/// The network plan of a spec, checked before anything exists.
pub(super) fn plan(spec: &Spec) -> Result<NetPlan> {
    let ns = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .and_then(|n| {
            n.iter()
                .find(|n| n.typ() == LinuxNamespaceType::Network)
                .cloned()
        });
    let Some(ns) = ns else {
        return Err(VmBackendError::Unsupported(
            "a VM container cannot use the host's network (a VM cannot share the host's network \
             stack): give it a network namespace (linux.namespaces, type network)"
                .into(),
        ));
    };
    // An empty path (Go's zero value) means a new namespace, as everywhere else.
    match moat_container::namespaces::ns_path(&ns) {
        None => Ok(NetPlan::Fresh),
        Some(p) if p.exists() => Ok(NetPlan::Join(p.clone())),
        Some(p) => Err(VmBackendError::Invalid(format!(
            "network namespace {} does not exist",
            p.display()
        ))),
    }
}

/// The config the guest gets: without the network namespace entry (the container uses the VM's).
pub(super) fn guest_config(config_json: &str) -> Result<String> {
    let mut v: serde_json::Value = serde_json::from_str(config_json)
        .map_err(|e| VmBackendError::Invalid(format!("config.json: {e}")))?;
    if let Some(ns) = v
        .pointer_mut("/linux/namespaces")
        .and_then(|n| n.as_array_mut())
    {
        ns.retain(|n| n["type"] != "network");
    }
    Ok(v.to_string())
}

/// What `vm.json` records of the attachment, for `destroy`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct NetRecord {
    pub netns: PathBuf,
    pub links: Vec<LinkRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct LinkRecord {
    pub interface: String,
    pub tap: String,
    pub mac: String,
}

impl NetRecord {
    pub fn of(a: &moat_vm::net::Attachment) -> NetRecord {
        NetRecord {
            netns: a.netns.clone(),
            links: a
                .links
                .iter()
                .map(|l| LinkRecord {
                    interface: l.interface.clone(),
                    tap: l.tap.clone(),
                    mac: l.mac.clone(),
                })
                .collect(),
        }
    }

    /// Remove the taps and tc qdiscs (after QEMU is gone).
    pub fn detach(&self, id: &str) -> Result<()> {
        let links: Vec<moat_vm::net::Link> = self
            .links
            .iter()
            .map(|l| moat_vm::net::Link {
                interface: l.interface.clone(),
                tap: l.tap.clone(),
                mac: l.mac.clone(),
            })
            .collect();
        moat_vm::net::detach(&self.netns, &links).map_err(VmBackendError::vm(format!(
            "remove the network attachment of container {id} in {}",
            self.netns.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_config_has_no_network_namespace() {
        let c =
            r#"{"linux":{"namespaces":[{"type":"pid"},{"type":"network","path":"/run/netns/x"}]}}"#;
        let g: serde_json::Value = serde_json::from_str(&guest_config(c).unwrap()).unwrap();
        assert_eq!(
            g["linux"]["namespaces"],
            serde_json::json!([{"type": "pid"}])
        );
    }
}
