//! Rootless `moat`: what a user without privileges gets, in the way rootless podman does it.
//!
//! - **Where**: images and containers under `$XDG_DATA_HOME/moat` (default
//!   `~/.local/share/moat`), the runtime core's state under `$XDG_RUNTIME_DIR/moat` (where
//!   rootless `moat-runtime` keeps it).
//! - **A user namespace per command**: a command that writes files owned by other ids (pull and
//!   import unpack layers, run mounts an overlay and starts a container, rm removes them) first
//!   makes its own process root of a new user namespace mapping the user's id to 0 and the
//!   user's /etc/subuid and /etc/subgid ranges from 1 on, written by `newuidmap`/`newgidmap`
//!   (package uidmap) from a short-lived helper child; `run` takes a mount namespace too, which
//!   holds the container's overlay and ends with its last process. Without subordinate ranges
//!   only the user's own id is mapped (said once per store). `exec` (and `stop`, `kill`, `rm` of
//!   one running container) joins the user namespace of the container's init instead. Nothing
//!   outlives the commands: no pause process.
//! - The container runs in that namespace (as under rootless podman: the spec has no user
//!   namespace of its own) and the runtime core runs in its rootless mode.
//!
//! What this module must never do: run anything but `newuidmap`/`newgidmap` in the helper, or
//! keep privileges it got from the namespace outside it.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use nix::unistd::{Gid, Uid};

use crate::error::{CliError, Result};

/// The directories of a rootless user's store and runtime state.
#[derive(Clone, Debug)]
pub struct Dirs {
    pub data: PathBuf,
    pub runtime: PathBuf,
}

/// `$XDG_DATA_HOME/moat` (default `~/.local/share/moat`) and `$XDG_RUNTIME_DIR/moat` (default
/// `/run/user/UID/moat` when that directory is user `uid`'s).
pub fn dirs(uid: u32) -> Result<Dirs> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let data = match (env("XDG_DATA_HOME"), env("HOME")) {
        (Some(d), _) => d,
        (None, Some(h)) => h.join(".local/share"),
        (None, None) => {
            return Err(CliError::Usage(
                "rootless: neither XDG_DATA_HOME nor HOME is set: give --root".into(),
            ))
        }
    }
    .join("moat");
    let runtime = match env("XDG_RUNTIME_DIR") {
        Some(r) => r,
        None => {
            let r = PathBuf::from(format!("/run/user/{uid}"));
            if !fs::metadata(&r).is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == uid) {
                return Err(CliError::Usage(format!(
                    "rootless: XDG_RUNTIME_DIR is not set and {} is not yours: set it to a \
                     directory only you can write (as systemd's pam_systemd does)",
                    r.display()
                )));
            }
            r
        }
    }
    .join("moat");
    Ok(Dirs { data, runtime })
}

/// The variable telling the sealed re-execution of a rootless `run`/`exec` that its user
/// namespace is entered already, and as which host uid.
const ENTERED_ENV: &str = "_MOAT_ROOTLESS_ENTERED_AS";

/// Before re-executing: say that the user namespace is entered (by host user `uid`).
pub fn mark_entered(uid: u32) {
    std::env::set_var(ENTERED_ENV, uid.to_string());
}

/// After re-executing (first thing, single-threaded): the host uid of the user whose namespace
/// this process already is root of, when [`mark_entered`] said so and the namespace agrees (its
/// uid 0 is that host uid, and this process is uid 0 there); the variable is removed either way.
pub fn entered_before_reexec() -> Option<u32> {
    let v = std::env::var(ENTERED_ENV).ok()?;
    std::env::remove_var(ENTERED_ENV);
    let uid: u32 = v.parse().ok().filter(|u| *u != 0)?;
    let map = fs::read_to_string("/proc/self/uid_map").ok()?;
    let first: Vec<u64> = map
        .lines()
        .next()?
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let agrees = first.len() == 3 && first[0] == 0 && first[1] == u64::from(uid) && first[2] >= 1;
    (agrees && nix::unistd::geteuid().is_root()).then_some(uid)
}

/// One line of /etc/subuid or /etc/subgid that belongs to the user: (start, count).
fn ranges(file: &str, name: &str, id: u32) -> Vec<(u64, u64)> {
    let text = fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.trim().split(':');
            let (who, start, count) = (f.next()?, f.next()?, f.next()?);
            (who == name || who == id.to_string())
                .then(|| Some((start.parse().ok()?, count.parse().ok()?)))
                .flatten()
        })
        .filter(|(_, c)| *c > 0)
        .collect()
}

/// The map arguments for newuidmap/newgidmap: the user's id as 0, its ranges from 1 on.
fn map_args(own: u32, ranges: &[(u64, u64)]) -> Vec<String> {
    let mut args = vec!["0".to_string(), own.to_string(), "1".to_string()];
    let mut next = 1u64;
    for (start, count) in ranges {
        args.extend([next.to_string(), start.to_string(), count.to_string()]);
        next += count;
    }
    args
}

/// How a command enters its user namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enter {
    /// A new user namespace.
    User,
    /// A new user namespace and a mount namespace (slave of the host's) owned by it.
    UserAndMount,
}

/// Make this (single-threaded) process root of a new user namespace mapping the user's ids;
/// `store` is where the "no subordinate ids" notice is remembered.
pub fn enter(how: Enter, store: &Path) -> Result<()> {
    let uid = nix::unistd::geteuid();
    let gid = nix::unistd::getegid();
    let name = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_default();
    let subuid = ranges("/etc/subuid", &name, uid.as_raw());
    let subgid = ranges("/etc/subgid", &name, uid.as_raw());
    let own_only = subuid.is_empty() || subgid.is_empty();
    if own_only {
        notice_once(store, &name, uid.as_raw());
        unshare_user(how)?;
        write_own_maps(uid.as_raw(), gid.as_raw())?;
    } else {
        let uid_args = map_args(uid.as_raw(), &subuid);
        let gid_args = map_args(gid.as_raw(), &subgid);
        map_through_helper(how, &uid_args, &gid_args)?;
    }
    become_root(!own_only)?;
    if how == Enter::UserAndMount {
        slave_root()?;
    }
    Ok(())
}

/// In a new mount namespace: host mounts still reach us; ours (the container's overlay) never
/// reach the host.
fn slave_root() -> Result<()> {
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(CliError::sys(
        "rootless: make / a slave mount in the new mount namespace",
    ))
}

fn unshare_user(how: Enter) -> Result<()> {
    let mut flags = CloneFlags::CLONE_NEWUSER;
    if how == Enter::UserAndMount {
        flags |= CloneFlags::CLONE_NEWNS;
    }
    nix::sched::unshare(flags).map_err(CliError::sys(
        "rootless: create a user namespace (is kernel.unprivileged_userns_clone 1?)",
    ))
}

/// Print, once per store, that only the user's own id is mapped.
fn notice_once(store: &Path, name: &str, uid: u32) {
    let mark = store.join(".no-subids-notice");
    if mark.exists() {
        return;
    }
    eprintln!(
        "moat: no /etc/subuid or /etc/subgid range for {name} (uid {uid}): only your own id is \
         mapped (as root) in containers; files of other owners become yours \
         (usermod --add-subuids/--add-subgids gives you a range)"
    );
    let _ = fs::create_dir_all(store);
    let _ = fs::write(mark, b"");
}

/// Map the caller's own ids (allowed without privileges once setgroups is denied).
fn write_own_maps(uid: u32, gid: u32) -> Result<()> {
    let w = |file: &str, text: String| -> Result<()> {
        let p = PathBuf::from("/proc/self").join(file);
        fs::write(&p, text).map_err(CliError::io("rootless: write", p))
    };
    w("setgroups", "deny".into())?;
    w("uid_map", format!("0 {uid} 1\n"))?;
    w("gid_map", format!("0 {gid} 1\n"))
}

/// Unshare, and have a helper child (still in the host's user namespace, as the map helpers
/// require) run newuidmap and newgidmap on this process.
fn map_through_helper(how: Enter, uid_args: &[String], gid_args: &[String]) -> Result<()> {
    let (go_rd, go_wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(CliError::sys("rootless: create a pipe"))?;
    let (res_rd, res_wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(CliError::sys("rootless: create a pipe"))?;
    let me = std::process::id();
    match moat_sys::process::clone3(0, false)
        .map_err(CliError::sys("rootless: fork the id map helper"))?
    {
        moat_sys::process::Forked::Child => {
            drop(go_wr);
            drop(res_rd);
            let mut go = [0u8; 1];
            let mut out = fs::File::from(res_wr);
            let code = match fs::File::from(go_rd).read(&mut go) {
                Ok(1) => {
                    let run = |helper: &str, args: &[String]| -> std::result::Result<(), String> {
                        let o = std::process::Command::new(helper)
                            .arg(me.to_string())
                            .args(args)
                            .stdin(std::process::Stdio::null())
                            .output()
                            .map_err(|e| format!("{helper} (package uidmap): {e}"))?;
                        if o.status.success() {
                            return Ok(());
                        }
                        Err(format!(
                            "{helper} {me} {} ({}): {}",
                            args.join(" "),
                            o.status,
                            String::from_utf8_lossy(&o.stderr).trim()
                        ))
                    };
                    match run("newuidmap", uid_args).and_then(|()| run("newgidmap", gid_args)) {
                        Ok(()) => 0,
                        Err(e) => {
                            let _ = out.write_all(e.as_bytes());
                            1
                        }
                    }
                }
                _ => 1, // the parent failed to unshare and said so itself
            };
            drop(out);
            moat_sys::process::exit_now(code)
        }
        moat_sys::process::Forked::Parent { pid, .. } => {
            drop(go_rd);
            drop(res_wr);
            let unshared = unshare_user(how);
            if unshared.is_ok() {
                let _ = nix::unistd::write(&go_wr, b"g");
            }
            drop(go_wr);
            let mut msg = String::new();
            let _ = fs::File::from(res_rd).read_to_string(&mut msg);
            let status = nix::sys::wait::waitpid(pid, None);
            unshared?;
            if !msg.is_empty() {
                return Err(CliError::Usage(format!(
                    "rootless: map the user namespace: {msg}"
                )));
            }
            match status {
                Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => Ok(()),
                other => Err(CliError::Usage(format!(
                    "rootless: the id map helper failed: {other:?}"
                ))),
            }
        }
    }
}

/// Become uid and gid 0 of the namespace just mapped, without the host's supplementary groups
/// (they are unmapped there) when setgroups is allowed.
fn become_root(setgroups: bool) -> Result<()> {
    if setgroups {
        nix::unistd::setgroups(&[]).map_err(CliError::sys("rootless: setgroups"))?;
    }
    let (g, u) = (Gid::from_raw(0), Uid::from_raw(0));
    nix::unistd::setresgid(g, g, g).map_err(CliError::sys("rootless: setgid 0"))?;
    nix::unistd::setresuid(u, u, u).map_err(CliError::sys("rootless: setuid 0"))
}

/// Whether this process's user namespace maps `gid` (`/proc/self/gid_map`).
pub fn maps_gid(gid: u64) -> bool {
    let text = fs::read_to_string("/proc/self/gid_map").unwrap_or_default();
    text.lines().any(|l| {
        let f: Vec<u64> = l
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        f.len() == 3 && f[0] <= gid && gid < f[0] + f[2]
    })
}

/// Where rootless containers' cgroups go: below the cgroup this process is in when that one is
/// delegated to the user (writable by root of the user namespace, i.e. owned by the user), as
/// rootless podman places its containers. On cgroup v1 the first writable controller's path
/// (containers are created below it: the other hierarchies are skipped unless a limit needs
/// them); on v2 the parent of this process's cgroup when that is writable (a cgroup with
/// processes cannot give controllers to children). `None`: nothing delegated, the default
/// `moat/<id>` (skipped by the runtime core unless a limit needs it, then one `error:`).
pub fn delegated_cgroup() -> Option<PathBuf> {
    let writable = |d: &Path| nix::unistd::access(d, nix::unistd::AccessFlags::W_OK).is_ok();
    let base = Path::new("/sys/fs/cgroup");
    let v2 = base.join("cgroup.controllers").exists();
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
        let rel = Path::new(path.trim_start_matches('/'));
        if rel.as_os_str().is_empty() {
            continue; // the root is never delegated
        }
        if v2 {
            let parent = rel.parent().filter(|p| !p.as_os_str().is_empty())?;
            return writable(&base.join(parent)).then(|| Path::new("/").join(parent));
        }
        if ctrls.is_empty() || ctrls.starts_with("name=") {
            continue;
        }
        if writable(&base.join(ctrls).join(rel)) {
            return Some(Path::new("/").join(rel));
        }
    }
    None
}

/// Join the user namespace of process `pid` (a container's init made by `moat run`) as its root;
/// with `Enter::UserAndMount`, in a mount namespace of its own too (`exec`: where the sealed
/// view of the binary can be made without copying it).
pub fn join(pid: i32, how: Enter) -> Result<()> {
    let p = format!("/proc/{pid}/ns/user");
    let f = fs::File::open(&p).map_err(CliError::io("rootless: open", &p))?;
    nix::sched::setns(&f, CloneFlags::CLONE_NEWUSER).map_err(CliError::sys(format!(
        "rootless: join the user namespace {p}"
    )))?;
    let setgroups =
        fs::read_to_string(format!("/proc/{pid}/setgroups")).is_ok_and(|s| s.trim() == "allow");
    become_root(setgroups)?;
    if how == Enter::UserAndMount {
        nix::sched::unshare(CloneFlags::CLONE_NEWNS)
            .map_err(CliError::sys("rootless: create a mount namespace"))?;
        slave_root()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subordinate_ranges_become_map_arguments() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("subuid");
        fs::write(
            &f,
            "alice:100000:65536\nbob:200000:10\n1001:300000:5\nalice:400000:0\n",
        )
        .unwrap();
        let f = f.to_str().unwrap();
        assert_eq!(ranges(f, "alice", 1000), vec![(100000, 65536)]);
        assert_eq!(ranges(f, "carol", 1001), vec![(300000, 5)]);
        assert!(ranges(f, "dave", 7).is_empty());
        assert_eq!(
            map_args(1000, &[(100000, 65536), (300000, 5)]),
            ["0", "1000", "1", "1", "100000", "65536", "65537", "300000", "5"]
        );
    }
}
