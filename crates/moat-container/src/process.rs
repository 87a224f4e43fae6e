//! Setting up the container process's credentials and limits just before `execve`: rlimits, the
//! capability sets (bounding, then uid/gid change with keep-caps, then permitted/effective/
//! inheritable, then ambient), supplementary groups, umask, the working directory (checked to be
//! inside the root: CVE-2024-21626) and the executable looked up in the container's `PATH`.

use std::collections::HashSet;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability as Cap};
use nix::errno::Errno;
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{Capabilities, LinuxCapabilities, PosixRlimit, Process};

use crate::error::{InitFailure, Step};

type R<T> = std::result::Result<T, InitFailure>;

/// Convert an OCI capability set to the `caps` crate's type (both use the kernel's names).
pub fn to_caps(set: &Capabilities) -> R<HashSet<Cap>> {
    set.iter()
        .map(|c| {
            let name = serde_json::to_value(c)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            name.parse::<Cap>().map_err(|_| {
                InitFailure::msg(Step::Capabilities, format!("unknown capability {name}"))
            })
        })
        .collect()
}

/// Map an OCI rlimit name to the kernel's resource number.
pub fn rlimit_resource(name: &str) -> Option<libc::__rlimit_resource_t> {
    Some(match name {
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        _ => return None,
    })
}

/// Apply `process.rlimits`. Raising a hard limit needs CAP_SYS_RESOURCE: the error says so.
pub fn set_rlimits(rlimits: &[PosixRlimit]) -> R<()> {
    for r in rlimits {
        let name = serde_json::to_value(r.typ())
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let res = rlimit_resource(&name)
            .ok_or_else(|| InitFailure::msg(Step::Rlimit, format!("unknown rlimit {name}")))?;
        moat_sys::process::setrlimit(res, r.soft(), r.hard()).map_err(|e| {
            let hint = if e == Errno::EPERM {
                " (raising a hard limit needs CAP_SYS_RESOURCE, which the runtime lacks here)"
            } else {
                ""
            };
            InitFailure::new(
                Step::Rlimit,
                format!("set {name} to soft {} hard {}{hint}", r.soft(), r.hard()),
                e,
            )
        })?;
    }
    Ok(())
}

/// Drop the bounding set to `caps.bounding` (must run while we still have CAP_SETPCAP).
pub fn apply_bounding(caps: Option<&LinuxCapabilities>) -> R<()> {
    let Some(c) = caps else { return Ok(()) };
    let keep = to_caps(c.bounding().as_ref().unwrap_or(&Capabilities::new()))?;
    for cap in caps::all() {
        if !keep.contains(&cap) {
            match caps::drop(None, CapSet::Bounding, cap) {
                Ok(()) => {}
                // Capabilities the running kernel does not know cannot be in the set anyway.
                Err(_)
                    if !caps::runtime::procfs_all_supported(None)
                        .map(|s| s.contains(&cap))
                        .unwrap_or(true) => {}
                Err(e) => {
                    return Err(InitFailure::msg(
                        Step::Capabilities,
                        format!("drop {cap} from the bounding set: {e}"),
                    ))
                }
            }
        }
    }
    Ok(())
}

/// Change to the process user: supplementary groups, gid, uid. Capabilities survive through
/// PR_SET_KEEPCAPS and are set right after by [`apply_caps`].
pub fn set_user(p: &Process) -> R<()> {
    let u = p.user();
    let uerr = |what: String| move |e| InitFailure::new(Step::User, what, e);
    nix::sys::prctl::set_keepcaps(true).map_err(uerr("set keep-caps".into()))?;
    let groups: Vec<Gid> = u
        .additional_gids()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(Gid::from_raw)
        .collect();
    match nix::unistd::setgroups(&groups) {
        Ok(()) => {}
        // A user namespace whose gid map an unprivileged user wrote denies setgroups (Linux
        // 3.19): with no additional gids asked, the groups stay as they are, as runc does.
        Err(nix::errno::Errno::EPERM) if groups.is_empty() && setgroups_denied() => {}
        Err(nix::errno::Errno::EPERM) if setgroups_denied() => {
            return Err(InitFailure::msg(
                Step::User,
                format!(
                    "process.user.additionalGids {:?}: setgroups is denied in this user \
                     namespace (rootless); remove them",
                    u.additional_gids().as_deref().unwrap_or_default()
                ),
            ))
        }
        Err(e) => return Err(uerr(format!("setgroups {:?}", u.additional_gids()))(e)),
    }
    let gid = Gid::from_raw(u.gid());
    nix::unistd::setresgid(gid, gid, gid).map_err(uerr(format!("setgid {}", u.gid())))?;
    let uid = Uid::from_raw(u.uid());
    nix::unistd::setresuid(uid, uid, uid).map_err(uerr(format!("setuid {}", u.uid())))?;
    nix::sys::prctl::set_keepcaps(false).map_err(uerr("clear keep-caps".into()))?;
    Ok(())
}

/// Whether this process's user namespace denies setgroups(2) (`/proc/self/setgroups`).
fn setgroups_denied() -> bool {
    std::fs::read_to_string("/proc/self/setgroups").is_ok_and(|s| s.trim() == "deny")
}

/// Set inheritable, effective, permitted, then ambient capabilities as the spec lists them.
/// `hold_sys_admin` keeps CAP_SYS_ADMIN effective and permitted beyond them (to install a seccomp
/// filter without no_new_privs as the last step); `execve` drops it again unless the spec's
/// inheritable, ambient or bounding set (for root) gives it.
pub fn apply_caps(caps: Option<&LinuxCapabilities>, hold_sys_admin: bool) -> R<()> {
    let empty = Capabilities::new();
    let (i, mut e, mut p, a) = match caps {
        Some(c) => (
            to_caps(c.inheritable().as_ref().unwrap_or(&empty))?,
            to_caps(c.effective().as_ref().unwrap_or(&empty))?,
            to_caps(c.permitted().as_ref().unwrap_or(&empty))?,
            to_caps(c.ambient().as_ref().unwrap_or(&empty))?,
        ),
        None => Default::default(),
    };
    let cerr = |set: &'static str| {
        move |err: caps::errors::CapsError| {
            InitFailure::msg(Step::Capabilities, format!("set {set} capabilities: {err}"))
        }
    };
    if hold_sys_admin {
        e.insert(Cap::CAP_SYS_ADMIN);
        p.insert(Cap::CAP_SYS_ADMIN);
    }
    caps::set(None, CapSet::Inheritable, &i).map_err(cerr("inheritable"))?;
    caps::set(None, CapSet::Effective, &e).map_err(cerr("effective"))?;
    caps::set(None, CapSet::Permitted, &p).map_err(cerr("permitted"))?;
    // An ambient capability must be permitted and inheritable; runc and crun skip the others
    // (runc's default spec lists ambient capabilities that are not inheritable).
    let a: HashSet<Cap> = a
        .into_iter()
        .filter(|c| p.contains(c) && i.contains(c))
        .collect();
    caps::set(None, CapSet::Ambient, &a).map_err(cerr("ambient"))?;
    Ok(())
}

/// The first attempt at the working directory, as the runtime's root: `Ok(None)` when entered,
/// `Ok(Some(errno))` when root was refused (EACCES/EPERM: retry as the process's user with
/// [`enter_cwd_after_setuid`]), an error otherwise.
pub fn enter_cwd_before_setuid(cwd: &Path) -> R<Option<i32>> {
    match enter_cwd(cwd) {
        Ok(()) => Ok(None),
        Err(f) if f.errno == libc::EACCES || f.errno == libc::EPERM => Ok(Some(f.errno)),
        Err(f) => Err(f),
    }
}

/// The second attempt, after the switch to the process's user (runc: "chdir to cwd may fail
/// before setuid; retry after"); its error names the directory and both refusals.
pub fn enter_cwd_after_setuid(p: &Process, first_errno: i32) -> R<()> {
    enter_cwd(p.cwd()).map_err(|f| {
        let first = nix::errno::Errno::from_raw(first_errno).desc();
        InitFailure {
            step: Step::Cwd,
            detail: format!(
                "chdir to cwd {} set in config.json failed: as the runtime's root: {first}; \
                 as uid {} gid {}",
                p.cwd().display(),
                p.user().uid(),
                p.user().gid()
            ),
            errno: f.errno,
        }
    })
}

/// `chdir` into `cwd` resolved inside the (already switched) root, and verify the result is
/// reachable from the root: a leaked descriptor cannot be used as a working directory.
pub fn enter_cwd(cwd: &Path) -> R<()> {
    let slash = nix::fcntl::open(
        "/",
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map(moat_sys::fd::owned)
    .map_err(|e| InitFailure::new(Step::Cwd, "open /", e))?;
    let fd =
        moat_sys::resolve::open_in_root(slash.as_fd(), cwd, libc::O_PATH | libc::O_DIRECTORY, 0)
            .map_err(|e| {
                InitFailure::new(
                    Step::Cwd,
                    format!("open working directory {}", cwd.display()),
                    e,
                )
            })?;
    nix::unistd::fchdir(fd.as_raw_fd())
        .map_err(|e| InitFailure::new(Step::Cwd, format!("chdir {}", cwd.display()), e))?;
    match nix::unistd::getcwd() {
        Ok(p) if p.is_absolute() => Ok(()),
        Ok(p) => Err(InitFailure::msg(
            Step::Cwd,
            format!(
                "working directory {} resolved outside the container root ({})",
                cwd.display(),
                p.display()
            ),
        )),
        Err(e) => Err(InitFailure::new(
            Step::Cwd,
            format!(
                "working directory {} is outside the container root",
                cwd.display()
            ),
            e,
        )),
    }
}

/// Find the program to execute like execvp would, using the container's `PATH`.
pub fn find_executable(arg0: &str, env: &[String]) -> R<PathBuf> {
    let check = |p: &Path| -> std::result::Result<(), Errno> {
        let st = nix::sys::stat::stat(p)?;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            return Err(Errno::EISDIR);
        }
        nix::unistd::access(p, nix::unistd::AccessFlags::X_OK)
    };
    if arg0.contains('/') {
        let p = PathBuf::from(arg0);
        return check(&p)
            .map(|_| p)
            .map_err(|e| InitFailure::new(Step::Executable, format!("exec {arg0}"), e));
    }
    let path = env
        .iter()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    let mut last = Errno::ENOENT;
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let p = Path::new(dir).join(arg0);
        match check(&p) {
            Ok(()) => return Ok(p),
            Err(e) => {
                if e != Errno::ENOENT {
                    last = e
                }
            }
        }
    }
    Err(InitFailure::new(
        Step::Executable,
        format!("exec {arg0:?}: not found in PATH {path:?}"),
        last,
    ))
}

/// The environment for execve: the spec's, plus HOME from the container's /etc/passwd when unset.
pub fn exec_env(p: &Process) -> Vec<CString> {
    let mut env = p.env().clone().unwrap_or_default();
    if !env.iter().any(|kv| kv.starts_with("HOME=")) {
        let home = std::fs::read_to_string("/etc/passwd")
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.len() >= 6 && f[2].parse::<u32>().ok() == Some(p.user().uid()))
                        .then(|| f[5].to_owned())
                })
            })
            .unwrap_or_else(|| "/".into());
        env.push(format!("HOME={home}"));
    }
    env.into_iter()
        .filter_map(|s| CString::new(s).ok())
        .collect()
}

/// `process.execCPUAffinity` of an exec'd process: `initial` before it joins the container's
/// cgroup, `final` after (an empty or absent list leaves the affinity to the kernel).
pub fn apply_exec_affinity(p: &Process, final_stage: bool) -> R<()> {
    let Some(aff) = p.exec_cpu_affinity() else {
        return Ok(());
    };
    let (field, list) = if final_stage {
        ("process.execCPUAffinity.final", aff.cpu_affinity_final())
    } else {
        ("process.execCPUAffinity.initial", aff.initial())
    };
    let Some(list) = list.as_deref().filter(|l| !l.trim().is_empty()) else {
        return Ok(());
    };
    let set = parse_cpu_list(list)
        .map_err(|m| InitFailure::msg(Step::Setup, format!("{field} {list:?}: {m}")))?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).map_err(|e| {
        InitFailure::new(
            Step::Setup,
            format!("{field} {list:?}: sched_setaffinity"),
            e,
        )
    })
}

/// `0-3,7` → a CPU set.
pub fn parse_cpu_list(list: &str) -> std::result::Result<nix::sched::CpuSet, String> {
    let mut set = nix::sched::CpuSet::new();
    for part in list.split(',').map(str::trim) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let num = |x: &str| {
            x.trim()
                .parse::<usize>()
                .map_err(|_| format!("bad CPU number {x:?}"))
        };
        let (a, b) = (num(a)?, num(b)?);
        if a > b {
            return Err(format!("bad range {part:?}"));
        }
        for cpu in a..=b {
            set.set(cpu)
                .map_err(|_| format!("CPU {cpu} is beyond the largest CPU set"))?;
        }
    }
    Ok(set)
}
