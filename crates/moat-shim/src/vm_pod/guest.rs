//! What a container of a pod VM looks like from the guest: its config.json rewritten for the
//! VM (namespaces joined by host path are dropped, so the pod's containers share the VM's), the
//! binds that put its rootfs and bind-mount sources into the VM's share, and the VM's size.
//!
//! What it must never do: share a host path the config did not name as the rootfs or as a bind
//! mount source, or pass a host namespace path into the guest.

use std::path::{Path, PathBuf};

use moat_agent_proto::{SharedMount, SharedRootfs};
use moat_vm::SharedBind;
use serde_json::Value;

use super::error::{Result, VmPodError};

/// The annotation that selects VM isolation for a pod (a pod annotation that containerd's CRI
/// copies into the sandbox's spec when the runtime's `pod_annotations` lists it).
pub const ISOLATION_ANNOTATION: &str = "io.moat.isolation";
/// Optional pod annotations sizing the VM (else the sandbox's limits, else the defaults).
pub const MEMORY_ANNOTATION: &str = "io.moat.vm.memory-mib";
pub const VCPUS_ANNOTATION: &str = "io.moat.vm.vcpus";
/// Guest RAM on top of the pod's memory, and the pod's memory when nothing sets it (as
/// `moat-runtime`'s VMs).
pub use moat_vm::{DEFAULT_MEMORY_MIB, MEMORY_OVERHEAD_MIB};

/// A container prepared for the guest.
pub struct GuestContainer {
    pub config_json: String,
    pub rootfs: SharedRootfs,
    pub mounts: Vec<SharedMount>,
    /// What the shim adds to the VM's share (targets relative to the share).
    pub binds: Vec<SharedBind>,
    /// The namespaces joined by host path that were dropped (the VM's own are used).
    pub dropped_namespaces: Vec<String>,
}

fn spec_err(id: &str) -> impl Fn(String) -> VmPodError + '_ {
    move |reason| VmPodError::Spec {
        id: id.to_string(),
        reason,
    }
}

fn annotation<'a>(spec: &'a Value, key: &str) -> Option<&'a str> {
    spec.get("annotations")?.get(key)?.as_str()
}

/// Whether a bundle's config asks for VM isolation.
pub fn wants_vm(bundle: &Path) -> bool {
    std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|d| serde_json::from_slice::<Value>(&d).ok())
        .is_some_and(|v| annotation(&v, ISOLATION_ANNOTATION) == Some("vm"))
}

/// Whether the config is a CRI sandbox's (the pause container, emulated by the shim).
pub fn is_sandbox(spec: &Value) -> bool {
    annotation(spec, "io.kubernetes.cri.container-type") == Some("sandbox")
}

/// Guest RAM (MiB, with [`MEMORY_OVERHEAD_MIB`]) and vCPUs for the pod whose sandbox (or only
/// container) has `spec`: the `io.moat.vm.*` annotations, else containerd 1.7's sandbox sizing
/// annotations, else the spec's limits, else the defaults.
pub fn vm_size(spec: &Value) -> (u32, u32) {
    let num = |k: &str| annotation(spec, k).and_then(|v| v.trim().parse::<u64>().ok());
    let res = &spec["linux"]["resources"];
    let mem = num(MEMORY_ANNOTATION)
        .or_else(|| num("io.kubernetes.cri.sandbox-memory").map(|b| b.div_ceil(1 << 20)))
        .or_else(|| res["memory"]["limit"].as_u64().map(|b| b.div_ceil(1 << 20)))
        .filter(|m| *m > 0)
        .unwrap_or(DEFAULT_MEMORY_MIB);
    let quota = |q: Option<u64>, p: Option<u64>| match (q, p) {
        (Some(q), Some(p)) if q > 0 && p > 0 => Some(q.div_ceil(p)),
        _ => None,
    };
    let host = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let vcpus = num(VCPUS_ANNOTATION)
        .or_else(|| {
            quota(
                num("io.kubernetes.cri.sandbox-cpu-quota"),
                num("io.kubernetes.cri.sandbox-cpu-period"),
            )
        })
        .or_else(|| {
            quota(
                res["cpu"]["quota"].as_i64().map(|q| q.max(0) as u64),
                res["cpu"]["period"].as_u64(),
            )
        })
        .unwrap_or(1)
        .clamp(1, host);
    let mem = (mem + MEMORY_OVERHEAD_MIB).min(u32::MAX as u64) as u32;
    (mem, vcpus as u32)
}

fn has_opt(m: &Value, o: &str) -> bool {
    m["options"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x == o))
}

/// Prepare container `id` of bundle `bundle` (its rootfs already mounted at `<bundle>/rootfs`).
pub fn prepare(id: &str, bundle: &Path) -> Result<GuestContainer> {
    let path = bundle.join("config.json");
    let data = std::fs::read(&path).map_err(VmPodError::io("read", &path))?;
    let mut spec: Value = serde_json::from_slice(&data).map_err(|e| spec_err(id)(e.to_string()))?;
    let mut dropped = Vec::new();
    if let Some(ns) = spec["linux"]["namespaces"].as_array_mut() {
        ns.retain(|n| {
            let joined = n.get("path").and_then(Value::as_str).is_some();
            let kind = n["type"].as_str().unwrap_or("?").to_string();
            // A namespace joined by host path (the sandbox's): the VM is the pod, so the
            // container uses the VM's. The sandbox's pid namespace becomes the pod's one in the
            // guest, which the agent keeps (CRI's `POD` pid mode: the pod's processes see each
            // other and none of them is its namespace's init).
            if joined && kind != "pid" {
                dropped.push(kind.clone());
            }
            !joined || kind == "pid"
        });
        for n in ns.iter_mut() {
            if let Some(o) = n.as_object_mut() {
                let pod_pid =
                    o.get("type").and_then(Value::as_str) == Some("pid") && o.get("path").is_some();
                if pod_pid {
                    o.insert("path".into(), moat_agent_proto::POD_PID_NS.into());
                } else {
                    o.remove("path");
                }
            }
        }
    }
    // The rootfs is shared writable even when `root.readonly` asks for a read-only one: the
    // container's init makes it read-only in the guest once its mount points are made (as runc
    // does on a host: a bind such as /etc/hostname may need its target created first). It is
    // the container's own snapshot, so nothing else is exposed by that.
    let rootfs_target = PathBuf::from(id).join("rootfs");
    let mut binds = vec![SharedBind {
        source: bundle.join("rootfs"),
        target: rootfs_target.clone(),
        readonly: false,
        recursive: false,
        propagate: false,
    }];
    let mut mounts = Vec::new();
    if let Some(ms) = spec["mounts"].as_array() {
        for (i, m) in ms.iter().enumerate() {
            let bind = m["type"] == "bind" || has_opt(m, "bind") || has_opt(m, "rbind");
            if !bind {
                continue;
            }
            let src = m["source"]
                .as_str()
                .ok_or_else(|| spec_err(id)(format!("mount {i} has no source")))?;
            let target = PathBuf::from(id).join(i.to_string());
            let ro = has_opt(m, "ro");
            binds.push(SharedBind {
                source: PathBuf::from(src),
                target: target.clone(),
                readonly: ro,
                recursive: has_opt(m, "rbind"),
                propagate: m["options"].as_array().is_some_and(|a| {
                    let opts: Vec<&str> = a.iter().filter_map(|o| o.as_str()).collect();
                    moat_container::mountopts::receives_propagation(&opts)
                }),
            });
            mounts.push(SharedMount {
                index: i as u32,
                path: target.to_string_lossy().into_owned(),
                readonly: ro,
            });
        }
    }
    Ok(GuestContainer {
        config_json: spec.to_string(),
        rootfs: SharedRootfs {
            path: rootfs_target.to_string_lossy().into_owned(),
            readonly: false,
        },
        mounts,
        binds,
        dropped_namespaces: dropped,
    })
}

/// What the sandbox's spec asks of the pod's namespaces, which the guest's are: its `hostname`
/// and its `linux.sysctl` (`None` when it asks for neither).
pub fn pod_settings(spec: &Value) -> Option<moat_agent_proto::PodSettings> {
    let hostname = spec["hostname"]
        .as_str()
        .filter(|h| !h.is_empty())
        .map(str::to_owned);
    let sysctls: Vec<(String, String)> = spec["linux"]["sysctl"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
        .collect();
    (hostname.is_some() || !sysctls.is_empty())
        .then_some(moat_agent_proto::PodSettings { hostname, sysctls })
}

/// The network namespace of the pod (the sandbox spec's network entry), which the VM joins;
/// `Ok(None)` for a pod without one of its own (loopback only); an error when the entry names a
/// namespace that does not exist (the pod must not silently lose its network).
pub fn netns_path(spec: &Value) -> std::result::Result<Option<std::path::PathBuf>, String> {
    let Some(path) = spec["linux"]["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["type"] == "network")
        .and_then(|n| n["path"].as_str())
        .filter(|p| !p.is_empty())
        .map(std::path::PathBuf::from)
    else {
        return Ok(None);
    };
    if path.exists() {
        Ok(Some(path))
    } else {
        Err(format!(
            "network namespace {} does not exist",
            path.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn joined_namespaces_are_dropped_and_binds_planned() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = json!({
            "process": {"args": ["sh"]},
            "root": {"path": "rootfs", "readonly": true},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": "/etc/hosts",
                 "options": ["rbind", "ro"]},
            ],
            "linux": {"namespaces": [
                {"type": "mount"},
                {"type": "network", "path": "/proc/1/ns/net"},
                {"type": "pid", "path": "/proc/1/ns/pid"},
                {"type": "ipc", "path": "/proc/1/ns/ipc"},
            ]},
        });
        std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
        let g = prepare("c1", dir.path()).unwrap();
        let out: Value = serde_json::from_str(&g.config_json).unwrap();
        assert_eq!(
            out["linux"]["namespaces"],
            json!([{"type": "mount"}, {"type": "pid", "path": moat_agent_proto::POD_PID_NS}])
        );
        assert_eq!(g.dropped_namespaces, ["network", "ipc"]);
        assert_eq!(g.rootfs.path, "c1/rootfs");
        // Made read-only in the guest by the container's init, after its mount points.
        assert!(!g.rootfs.readonly && !g.binds[0].readonly);
        assert_eq!(out["root"]["readonly"], true);
        assert_eq!(g.binds.len(), 2);
        assert_eq!(g.binds[1].target, Path::new("c1/1"));
        assert!(g.binds[1].readonly && g.binds[1].recursive);
        assert_eq!(g.mounts[0].index, 1);
    }

    #[test]
    fn pod_settings_from_the_sandbox_spec() {
        let s = json!({"hostname": "web-0", "linux": {"sysctl": {"kernel.shm_rmid_forced": "1"}}});
        let p = pod_settings(&s).unwrap();
        assert_eq!(p.hostname.as_deref(), Some("web-0"));
        assert_eq!(p.sysctls, [("kernel.shm_rmid_forced".into(), "1".into())]);
        assert!(pod_settings(&json!({"hostname": "", "linux": {}})).is_none());
    }

    #[test]
    fn size_from_annotations_or_limits() {
        let s = json!({"annotations": {"io.moat.vm.memory-mib": "200"}});
        assert_eq!(vm_size(&s).0, 200 + MEMORY_OVERHEAD_MIB as u32);
        let s = json!({"linux": {"resources": {"memory": {"limit": 64u64 << 20}}}});
        assert_eq!(vm_size(&s), (64 + MEMORY_OVERHEAD_MIB as u32, 1));
        assert_eq!(
            vm_size(&json!({})).0,
            (DEFAULT_MEMORY_MIB + MEMORY_OVERHEAD_MIB) as u32
        );
    }
}
