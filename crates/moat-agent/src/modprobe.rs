//! The agent as the guest's `/sbin/modprobe`: when a container makes a device whose driver is a
//! module (`brctl addbr`, `ip link add type veth`), the kernel runs
//! `/sbin/modprobe -q -- <name or alias>` (`request_module`) as root in the guest's initial
//! namespaces. The agent, run under that name, finds the module in the initramfs's
//! `/lib/modules/<release>/` (`modules.dep`, `modules.alias`, written by `moat-vm` for its
//! on-demand modules) and loads it after its dependencies with finit_module(2).
//!
//! What it must never do: load a file from outside that directory (a name or alias that is not
//! listed there fails), or do anything else: it is not PID 1 and serves nothing.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crate::error::{AgentFailure, Result};

/// Where the kernel looks for modprobe (`CONFIG_MODPROBE_PATH`, `kernel.modprobe`).
pub const PATH: &str = "/sbin/modprobe";

/// Whether this process was started as `modprobe` (argv[0]).
pub fn called_as() -> bool {
    std::env::args_os()
        .next()
        .is_some_and(|a| Path::new(&a).file_name() == Some("modprobe".as_ref()))
}

/// Load every module named on the command line; 0 when all of them are loaded. Failures go to
/// the kernel log (the kernel discards modprobe's output).
pub fn main() -> i32 {
    // Options (`-q`, `-b`, ...) change nothing here; `--` ends them.
    let mut names = Vec::new();
    let mut options_done = false;
    for a in std::env::args().skip(1) {
        if options_done || !a.starts_with('-') {
            names.push(a);
        } else if a == "--" {
            options_done = true;
        }
    }
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = Path::new("/lib/modules").join(release);
    let mut code = 0;
    for n in &names {
        if let Err(e) = Index::read(&dir).and_then(|i| i.load(n)) {
            kmsg(&format!("modprobe {n}: {e}"));
            code = 1;
        }
    }
    code
}

fn kmsg(msg: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        let _ = f.write_all(format!("<4>moat-agent: {msg}\n").as_bytes());
    }
}

/// A module's name as the kernel knows it (`-` and `_` are the same).
fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

/// `modules.dep` and `modules.alias` of one directory.
struct Index {
    dir: PathBuf,
    /// Module name -> (path relative to `dir`, direct dependencies' paths).
    deps: HashMap<String, (String, Vec<String>)>,
    /// (pattern, module name), in file order.
    aliases: Vec<(String, String)>,
}

impl Index {
    fn read(dir: &Path) -> Result<Index> {
        let read = |f: &str| {
            let p = dir.join(f);
            std::fs::read_to_string(&p).map_err(|e| AgentFailure::io("read", &p, e))
        };
        Ok(Index::parse(
            dir,
            &read("modules.dep")?,
            &read("modules.alias")?,
        ))
    }

    fn parse(dir: &Path, dep: &str, alias: &str) -> Index {
        let deps = dep
            .lines()
            .filter_map(|l| {
                let (rel, ds) = l.split_once(':')?;
                let rel = rel.trim().to_owned();
                let ds = ds.split_whitespace().map(str::to_owned).collect();
                Some((module_of(&rel)?, (rel, ds)))
            })
            .collect();
        let aliases = alias
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                (w.next()? == "alias").then_some(())?;
                Some((w.next()?.to_owned(), canonical(w.next()?)))
            })
            .collect();
        Index {
            dir: dir.to_path_buf(),
            deps,
            aliases,
        }
    }

    /// The module that `name` (a module name or an alias) stands for.
    fn resolve(&self, name: &str) -> Result<String> {
        let c = canonical(name);
        if self.deps.contains_key(&c) {
            return Ok(c);
        }
        self.aliases
            .iter()
            .find(|(pat, m)| glob(pat.as_bytes(), name.as_bytes()) && self.deps.contains_key(m))
            .map(|(_, m)| m.clone())
            .ok_or_else(|| {
                AgentFailure::NotFound(format!(
                    "module or alias {name} in {} (the guest carries only moat's on-demand \
                     modules)",
                    self.dir.display()
                ))
            })
    }

    fn load(&self, name: &str) -> Result<()> {
        let m = self.resolve(name)?;
        self.load_module(&m, &mut HashSet::new())
    }

    fn load_module(&self, m: &str, seen: &mut HashSet<String>) -> Result<()> {
        if !seen.insert(m.to_owned()) {
            return Ok(());
        }
        let (rel, ds) = self
            .deps
            .get(m)
            .ok_or_else(|| AgentFailure::NotFound(format!("module {m} in modules.dep")))?;
        for d in ds {
            if let Some(dm) = module_of(d) {
                self.load_module(&dm, seen)?;
            }
        }
        let p = self.dir.join(rel);
        let f = File::open(&p).map_err(|e| AgentFailure::io("open module", &p, e))?;
        match nix::kmod::finit_module(f.as_fd(), c"", nix::kmod::ModuleInitFlags::empty()) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
            Err(errno) => Err(AgentFailure::Sys {
                what: format!("finit_module {}", p.display()),
                errno,
            }),
        }
    }
}

/// The module name of a `.ko` path (`kernel/net/bridge/bridge.ko` -> `bridge`); none for a
/// path that climbs out of the directory.
fn module_of(rel: &str) -> Option<String> {
    let p = Path::new(rel);
    if !p
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)))
    {
        return None;
    }
    let n = p.file_name()?.to_str()?.strip_suffix(".ko")?;
    Some(canonical(n))
}

/// Shell-style match of `pat` (`*`, `?`) against `s`, as modprobe matches aliases.
fn glob(pat: &[u8], s: &[u8]) -> bool {
    match (pat.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&pat[1..], s) || (!s.is_empty() && glob(pat, &s[1..])),
        (Some(b'?'), Some(_)) => glob(&pat[1..], &s[1..]),
        (Some(p), Some(c)) if p == c => glob(&pat[1..], &s[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko\n\
                       kernel/net/802/stp.ko: kernel/net/llc/llc.ko\n\
                       kernel/net/llc/llc.ko: \n\
                       kernel/net/8021q/8021q.ko: \n";
    const ALIAS: &str = "alias rtnl-link-bridge bridge\nalias rtnl-link-vlan 8021q\n\
                         alias pci:v00001AF4d*sv* virtio-x\n";

    #[test]
    fn names_and_aliases_resolve_to_listed_modules() {
        let i = Index::parse(Path::new("/m"), DEP, ALIAS);
        assert_eq!(i.resolve("bridge").unwrap(), "bridge");
        assert_eq!(i.resolve("rtnl-link-bridge").unwrap(), "bridge");
        assert_eq!(i.resolve("rtnl-link-vlan").unwrap(), "8021q");
        assert_eq!(i.deps["bridge"].1.len(), 2);
        // An alias of a module that is not carried, and an unknown name, fail.
        assert!(i.resolve("pci:v00001AF4d00001000sv0").is_err());
        assert!(i.resolve("ext9").is_err());
    }

    #[test]
    fn paths_out_of_the_directory_name_no_module() {
        assert_eq!(module_of("kernel/net/llc/llc.ko").as_deref(), Some("llc"));
        assert_eq!(module_of("../../tmp/x.ko"), None);
        assert_eq!(module_of("/tmp/x.ko"), None);
        assert_eq!(module_of("kernel/x.o"), None);
    }

    #[test]
    fn glob_matches_like_fnmatch() {
        assert!(glob(b"pci:v*d*", b"pci:v1d2"));
        assert!(glob(b"a?c", b"abc"));
        assert!(!glob(b"a?c", b"ac"));
        assert!(!glob(b"rtnl-link-bridge", b"rtnl-link-bridges"));
    }
}
