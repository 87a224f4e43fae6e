//! Which namespaces a container creates and joins, and how: the plan decides which namespace flags
//! go straight into `clone3` (the fast path: one fork, no unshare) and which must be set up with
//! `setns`/`unshare` in the child, and whether a second fork is needed (a new PID or time namespace
//! applies only to children of the process that creates it).

use std::path::PathBuf;

use oci_spec::runtime::{LinuxNamespaceType, Spec};

/// The path of a namespace to join; an empty `path` (what Go tools write for the zero value, and
/// runc reads as "create a new one") means none.
pub fn ns_path(ns: &oci_spec::runtime::LinuxNamespace) -> Option<&PathBuf> {
    ns.path().as_ref().filter(|p| !p.as_os_str().is_empty())
}

/// The kernel's (and runc's) name of a namespace type: `pid`, `network`, `mount`...
pub fn type_name(t: LinuxNamespaceType) -> String {
    serde_json::to_value(t)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{t:?}").to_lowercase())
}

/// The namespace plan of one container.
#[derive(Debug, Clone, Default)]
pub struct NsPlan {
    /// Flags of namespaces to create.
    pub new: u64,
    /// Namespaces to join, by path.
    pub joins: Vec<(LinuxNamespaceType, PathBuf)>,
    /// Flags given to clone3.
    pub clone_flags: u64,
    /// Flags the child unshares itself.
    pub unshare_flags: u64,
    /// Whether the child forks the real init.
    pub second_fork: bool,
    /// Whether the runtime itself runs in a user namespace (rootless podman runs it as root in
    /// one): device nodes are then bound from the host, sysfs bound when it cannot be mounted,
    /// as in a user namespace of the container's own. Only rootless mode looks.
    pub runtime_in_userns: bool,
}

impl NsPlan {
    pub fn flag(t: LinuxNamespaceType) -> u64 {
        (match t {
            LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
            LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
            LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
            LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
            LinuxNamespaceType::User => libc::CLONE_NEWUSER,
            LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
            LinuxNamespaceType::Network => libc::CLONE_NEWNET,
            LinuxNamespaceType::Time => libc::CLONE_NEWTIME,
        }) as u64
    }

    pub fn from_spec(spec: &Spec) -> NsPlan {
        let mut plan = NsPlan::default();
        for ns in spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .unwrap_or_default()
        {
            match ns_path(&ns) {
                Some(p) => plan.joins.push((ns.typ(), p.clone())),
                None => plan.new |= Self::flag(ns.typ()),
            }
        }
        let time = libc::CLONE_NEWTIME as u64;
        let pid = libc::CLONE_NEWPID as u64;
        // The cgroup namespace is always unshared by the child, after the runtime has moved it
        // into the container's cgroup, so that the namespace is rooted there.
        let cgroup = libc::CLONE_NEWCGROUP as u64;
        if plan.joins.is_empty() && plan.new & time == 0 {
            plan.clone_flags = plan.new & !cgroup;
            plan.unshare_flags = plan.new & cgroup;
            plan.second_fork = false;
        } else {
            plan.clone_flags = 0;
            plan.unshare_flags = plan.new;
            plan.second_fork = plan.new & (pid | time) != 0
                || plan
                    .joins
                    .iter()
                    .any(|(t, _)| matches!(t, LinuxNamespaceType::Pid | LinuxNamespaceType::Time));
        }
        plan
    }

    /// The plan of `exec`: join every namespace of the process `pid`.
    pub fn join_all(pid: i32, types: &[LinuxNamespaceType]) -> NsPlan {
        let joins: Vec<(LinuxNamespaceType, PathBuf)> = types
            .iter()
            .map(|t| {
                let name = match t {
                    LinuxNamespaceType::Mount => "mnt",
                    LinuxNamespaceType::Network => "net",
                    LinuxNamespaceType::Cgroup => "cgroup",
                    LinuxNamespaceType::Uts => "uts",
                    LinuxNamespaceType::Ipc => "ipc",
                    LinuxNamespaceType::User => "user",
                    LinuxNamespaceType::Pid => "pid",
                    LinuxNamespaceType::Time => "time",
                };
                (*t, PathBuf::from(format!("/proc/{pid}/ns/{name}")))
            })
            .collect();
        let second_fork = joins
            .iter()
            .any(|(t, _)| matches!(t, LinuxNamespaceType::Pid | LinuxNamespaceType::Time));
        NsPlan {
            new: 0,
            joins,
            clone_flags: 0,
            unshare_flags: 0,
            second_fork,
            runtime_in_userns: false,
        }
    }

    pub fn new_userns(&self) -> bool {
        self.new & libc::CLONE_NEWUSER as u64 != 0
    }
    pub fn in_userns(&self) -> bool {
        self.runtime_in_userns
            || self.new_userns()
            || self
                .joins
                .iter()
                .any(|(t, _)| *t == LinuxNamespaceType::User)
    }
    /// Whether the calling process runs in a user namespace other than the initial one (its uid
    /// map is not the identity over the whole range), as runc's `userns.RunningInUserNS`.
    pub fn running_in_userns() -> bool {
        std::fs::read_to_string("/proc/self/uid_map").is_ok_and(|m| {
            let f: Vec<&str> = m.split_whitespace().collect();
            f != ["0", "0", "4294967295"]
        })
    }

    pub fn new_cgroupns(&self) -> bool {
        self.new & libc::CLONE_NEWCGROUP as u64 != 0
    }
    /// Whether the container has a namespace of this type, new or joined.
    pub fn has(&self, t: LinuxNamespaceType) -> bool {
        self.new & Self::flag(t) != 0 || self.joins.iter().any(|(j, _)| *j == t)
    }

    /// Human-readable list of flags, for error messages.
    pub fn describe(flags: u64) -> String {
        let names = [
            (libc::CLONE_NEWUSER, "user"),
            (libc::CLONE_NEWNS, "mount"),
            (libc::CLONE_NEWPID, "pid"),
            (libc::CLONE_NEWNET, "network"),
            (libc::CLONE_NEWIPC, "ipc"),
            (libc::CLONE_NEWUTS, "uts"),
            (libc::CLONE_NEWCGROUP, "cgroup"),
            (libc::CLONE_NEWTIME, "time"),
        ];
        names
            .iter()
            .filter(|(f, _)| flags & *f as u64 != 0)
            .map(|(_, n)| *n)
            .collect::<Vec<_>>()
            .join(",")
    }
}
