//! runc's rootless cgroup rules, for a runtime running without privileges over the cgroup tree
//! (a non-root user, or root in a user namespace):
//! - each directory of the container's cgroup is created and joined if the user may; one it may
//!   not (EACCES, EPERM, EROFS) is skipped, with a note saying so ([`Cgroup::create_rootless`],
//!   [`Cgroup::join_rootless`]);
//! - a limit whose controller was skipped is an error naming the field ([`check_limits`]): a
//!   limit is never silently dropped;
//! - device rules are not applied (the caller leaves them out): they need privileges a rootless
//!   runtime lacks, and the container can only reach what the user can reach anyway.
//!
//! A delegated subtree (one chown'ed to the user, as systemd's `Delegate=yes` does) is used as is.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;

use crate::{v1, v2, Cgroup, CgroupError, Result};

/// Whether `e` means "this user may not do that here" (skip the directory), rather than a fault.
fn denied(e: &CgroupError) -> bool {
    let io = match e {
        CgroupError::Create { source, .. }
        | CgroupError::Write { source, .. }
        | CgroupError::Read { source, .. } => source,
        _ => return false,
    };
    io.kind() == ErrorKind::PermissionDenied || io.raw_os_error() == Some(libc::EROFS)
}

/// The limits `res` asks for, as (field, v1 controller) pairs; device rules are not counted. A
/// field counts when it is present and not empty after runc's zero-means-unset normalisation.
pub fn limits_asked(res: &LinuxResources) -> Result<Vec<(String, &'static str)>> {
    let res = crate::unset::normalize(res)?;
    let v = serde_json::to_value(&res).map_err(|e| CgroupError::Invalid {
        field: "linux.resources".into(),
        reason: e.to_string(),
    })?;
    let mut out = Vec::new();
    let Some(obj) = v.as_object() else {
        return Ok(out);
    };
    let set = |v: &serde_json::Value| match v {
        serde_json::Value::Null => false,
        serde_json::Value::Object(o) => o.values().any(|x| !x.is_null()),
        serde_json::Value::Array(a) => !a.is_empty(),
        _ => true,
    };
    for (key, val) in obj {
        if key == "devices" || !set(val) {
            continue;
        }
        let field = format!("linux.resources.{key}");
        match key.as_str() {
            "cpu" => {
                for (sub, sv) in val.as_object().into_iter().flatten() {
                    if !sv.is_null() {
                        let ctrl = if sub == "cpus" || sub == "mems" {
                            "cpuset"
                        } else {
                            "cpu"
                        };
                        out.push((format!("{field}.{sub}"), ctrl));
                    }
                }
            }
            "network" => {
                for (sub, sv) in val.as_object().into_iter().flatten() {
                    if set(sv) {
                        let ctrl = if sub == "classID" {
                            "net_cls"
                        } else {
                            "net_prio"
                        };
                        out.push((format!("{field}.{sub}"), ctrl));
                    }
                }
            }
            "memory" => out.push((field, "memory")),
            "pids" => out.push((field, "pids")),
            "blockIO" => out.push((field, "blkio")),
            "hugepageLimits" => out.push((field, "hugetlb")),
            "rdma" => out.push((field, "rdma")),
            _ => out.push((field, "unified")),
        }
    }
    Ok(out)
}

/// Refuse a limit of `asked` ([`limits_asked`]) that `usable` (what the user could create and
/// join of `full`) cannot enforce: the error names the field and the directory that was not
/// writable.
pub fn check_limits(
    full: &Cgroup,
    usable: Option<&Cgroup>,
    asked: &[(String, &'static str)],
) -> Result<()> {
    for (field, ctrl) in asked {
        let (have, want): (bool, Option<PathBuf>) = match full {
            Cgroup::V2 { dir } => (usable.is_some(), Some(dir.clone())),
            Cgroup::V1 { dirs } => {
                let of = |d: &[PathBuf]| -> Option<PathBuf> {
                    let m = v1::V1Dirs::from_dirs(d);
                    if *ctrl == "unified" {
                        m.unified().map(Path::to_path_buf)
                    } else {
                        m.get(ctrl).map(Path::to_path_buf)
                    }
                };
                let have = usable.is_some_and(|u| of(&u.dirs()).is_some());
                (have, of(dirs))
            }
        };
        if !have {
            let uid = caller();
            return Err(CgroupError::Rootless {
                field: field.clone(),
                reason: match want {
                    Some(d) => format!(
                        "the {ctrl} cgroup {} is not writable by uid {uid} (rootless): \
                         delegate it to the user or remove the limit",
                        d.display()
                    ),
                    None => format!(
                        "the {ctrl} controller is not available to uid {uid} (rootless): \
                         remove the limit"
                    ),
                },
            });
        }
    }
    Ok(())
}

/// The caller's uid for messages: `1001`, or `0 (1001 on the host)` in a user namespace (the
/// rootless `moat` CLI runs the core as root of its own).
fn caller() -> String {
    let uid = moat_sys::nix::unistd::geteuid().as_raw();
    let map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    let host = map.lines().find_map(|l| {
        let f: Vec<u64> = l
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        (f.len() == 3 && f[0] <= u64::from(uid) && u64::from(uid) < f[0] + f[2])
            .then(|| f[1] + u64::from(uid) - f[0])
    });
    match host {
        Some(h) if h != u64::from(uid) => format!("{uid} ({h} on the host)"),
        _ => uid.to_string(),
    }
}

impl Cgroup {
    /// Rootless create: make each directory the user may make; returns the cgroup of those (None
    /// when there is none) and a note per directory skipped.
    pub fn create_rootless(&self) -> Result<(Option<Cgroup>, Vec<String>)> {
        let mut kept = Vec::new();
        let mut notes = Vec::new();
        for dir in self.dirs() {
            let r = if dir.starts_with(format!("{}/cpuset", crate::ROOT)) {
                v1::create_cpuset_dirs(&dir)
            } else {
                std::fs::create_dir_all(&dir).map_err(|source| CgroupError::Create {
                    path: dir.clone(),
                    source,
                })
            };
            match r {
                Ok(()) => {
                    if dir.join("cgroup.controllers").exists() {
                        v2::enable_controllers(&dir);
                    }
                    kept.push(dir)
                }
                Err(e) if denied(&e) => {
                    notes.push(format!("rootless: cgroup {} skipped: {e}", dir.display()))
                }
                Err(e) => return Err(e),
            }
        }
        Ok((self.with_dirs(kept), notes))
    }

    /// Rootless placement of `pid`: join each directory the user may join; one it may not join
    /// (e.g. the cgroup2 rule on the common ancestor's `cgroup.procs`) is removed and skipped.
    pub fn join_rootless(&self, pid: i32) -> Result<(Option<Cgroup>, Vec<String>)> {
        let mut kept = Vec::new();
        let mut notes = Vec::new();
        for dir in self.dirs() {
            match crate::write(&dir.join("cgroup.procs"), &pid.to_string()) {
                Ok(()) => kept.push(dir),
                Err(e) if denied(&e) => {
                    let _ = std::fs::remove_dir(&dir);
                    notes.push(format!("rootless: cgroup {} skipped: {e}", dir.display()))
                }
                Err(e) => return Err(e),
            }
        }
        Ok((self.with_dirs(kept), notes))
    }

    fn with_dirs(&self, dirs: Vec<PathBuf>) -> Option<Cgroup> {
        match (self, dirs.is_empty()) {
            (_, true) => None,
            (Cgroup::V1 { .. }, false) => Some(Cgroup::V1 { dirs }),
            (Cgroup::V2 { .. }, false) => Some(Cgroup::V2 {
                dir: dirs.into_iter().next().unwrap_or_default(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(json: &str) -> LinuxResources {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn limits_asked_ignores_devices_and_unset_values() {
        let r = res(
            r#"{"devices":[{"allow":false,"access":"rwm"}],"cpu":{"shares":0},
                      "blockIO":{"weight":0}}"#,
        );
        assert!(limits_asked(&r).unwrap().is_empty());
        let r = res(r#"{"memory":{"limit":1048576},"pids":{"limit":10},"cpu":{"cpus":"0"}}"#);
        let got = limits_asked(&r).unwrap();
        assert!(got.contains(&("linux.resources.memory".into(), "memory")));
        assert!(got.contains(&("linux.resources.pids".into(), "pids")));
        assert!(got.contains(&("linux.resources.cpu.cpus".into(), "cpuset")));
    }

    #[test]
    fn check_limits_names_the_field() {
        let full = Cgroup::V2 {
            dir: "/sys/fs/cgroup/x".into(),
        };
        let asked = vec![("linux.resources.pids".to_string(), "pids")];
        let e = check_limits(&full, None, &asked).unwrap_err().to_string();
        assert!(e.starts_with("linux.resources.pids: "), "{e}");
        assert!(e.contains("/sys/fs/cgroup/x"), "{e}");
        assert!(check_limits(&full, Some(&full), &asked).is_ok());
        assert!(check_limits(&full, None, &[]).is_ok());
    }
}
