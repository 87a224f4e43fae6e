//! Guest assets: the kernel (Debian's `linux-image-cloud-amd64`, fetched with `apt-get download`
//! and unpacked with `dpkg-deb -x` into the cache), the kernel modules the agent needs (with their
//! dependencies, read from each module's `.modinfo`) and those containers may ask for
//! ([`ON_DEMAND_MODULES`]), and the initramfs, written by moat itself
//! and cached under the SHA-256 of what it holds.
//!
//! Cache layout under [`cache_dir`]: `kernel/<release>/{vmlinuz,modules/}` plus a `.complete`
//! marker written last, and `initramfs/<hash>.cpio`. Writers go through a temporary name and a
//! rename, so a killed setup never leaves a half asset that looks complete.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::cpio::CpioWriter;
use crate::error::{Result, VmError};

/// The Debian package whose dependency names the current cloud kernel.
pub const KERNEL_META_PACKAGE: &str = "linux-image-cloud-amd64";
/// Modules the agent loads, in this order after their dependencies (virtio-mmio transport, the
/// root filesystem disk, the agent's serial port, the host's shared directory for bind mounts, the
/// network card, the writable layer of an image disk).
pub const GUEST_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_blk",
    "virtio_console",
    "virtiofs",
    "virtio_net",
    "overlay",
];

/// Modules a container may need that the agent does not load at boot: the kernel asks for them
/// (`request_module`) when a container makes such a device (`brctl addbr`, `ip link add type
/// bridge|veth|dummy|macvlan|vlan`, opening /dev/net/tun), and the agent, run by the kernel as
/// `/sbin/modprobe`, loads one with its dependencies. They sit in the initramfs under
/// `lib/modules/<release>/` (paths as in the kernel package) with a `modules.dep` (each module's
/// direct dependencies among them) and a `modules.alias` (from their `alias=` modinfo): about
/// 1.1 MB for the bridge and the common virtual network devices.
pub const ON_DEMAND_MODULES: &[&str] = &["bridge", "veth", "dummy", "macvlan", "8021q", "tun"];

/// The cache directory: `$MOAT_VM_DIR`, or /var/lib/moat/vm.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("MOAT_VM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/moat/vm"))
}

/// A guest kernel in the cache.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub release: String,
    pub vmlinuz: PathBuf,
    pub modules: PathBuf,
}

/// The cached kernel, if a complete one is there.
pub fn cached_kernel(cache: &Path) -> Option<Kernel> {
    let rd = std::fs::read_dir(cache.join("kernel")).ok()?;
    let mut found: Vec<Kernel> = rd
        .flatten()
        .filter(|e| e.path().join(".complete").exists())
        .map(|e| Kernel {
            release: e.file_name().to_string_lossy().into_owned(),
            vmlinuz: e.path().join("vmlinuz"),
            modules: e.path().join("modules"),
        })
        .collect();
    found.sort_by(|a, b| a.release.cmp(&b.release));
    found.pop()
}

fn run(cmd: &mut Command) -> Result<String> {
    let text = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(|source| VmError::Spawn {
        program: text.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(VmError::Command {
            command: text,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The cached kernel, fetched first when missing (`apt-get download` of the cloud kernel, with
/// one `apt-get update` if apt does not know the package yet).
pub fn ensure_kernel(cache: &Path) -> Result<Kernel> {
    if let Some(k) = cached_kernel(cache) {
        return Ok(k);
    }
    let missing = |reason: String| VmError::KernelMissing {
        dir: cache.to_path_buf(),
        reason,
    };
    std::fs::create_dir_all(cache.join("kernel")).map_err(VmError::io("create", cache))?;
    // First use: say what takes the time (a download of ~80 MB through apt), once.
    eprintln!(
        "moat: fetching the guest kernel ({KERNEL_META_PACKAGE}) into {} (first VM only; \
         `moat-vm-setup` does it ahead of time)",
        cache.display()
    );
    let work = cache.join(format!("fetch.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(VmError::io("create", &work))?;
    let result = fetch_into(cache, &work);
    let _ = std::fs::remove_dir_all(&work);
    result.map_err(|e| missing(e.to_string()))?;
    cached_kernel(cache).ok_or_else(|| missing("fetched, but no kernel found".into()))
}

fn apt_download(work: &Path, pkg: &str) -> Result<PathBuf> {
    let dl = |w: &Path| {
        run(Command::new("apt-get")
            .args(["download", "-q", pkg])
            .current_dir(w))
    };
    if dl(work).is_err() {
        run(Command::new("apt-get").args(["update", "-q"]))?;
        dl(work)?;
    }
    std::fs::read_dir(work)
        .map_err(VmError::io("read", work))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let n = p.file_name().unwrap_or_default().to_string_lossy();
            n.starts_with(&format!("{pkg}_")) && n.ends_with(".deb")
        })
        .ok_or_else(|| VmError::Config(format!("apt-get download {pkg} wrote no .deb")))
}

fn fetch_into(cache: &Path, work: &Path) -> Result<()> {
    let meta = apt_download(work, KERNEL_META_PACKAGE)?;
    let depends = run(Command::new("dpkg-deb").arg("-f").arg(&meta).arg("Depends"))?;
    let image = depends
        .split([',', '|'])
        .map(|d| d.split_whitespace().next().unwrap_or(""))
        .find(|d| d.starts_with("linux-image-"))
        .ok_or_else(|| {
            VmError::Config(format!(
                "{KERNEL_META_PACKAGE} depends on no linux-image: {depends}"
            ))
        })?
        .to_string();
    let deb = apt_download(work, &image)?;
    let x = work.join("x");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x))?;
    let boot = x.join("boot");
    let vmlinuz = std::fs::read_dir(&boot)
        .map_err(VmError::io("read", &boot))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .starts_with("vmlinuz-")
        })
        .ok_or_else(|| VmError::Config(format!("no vmlinuz-* in {}", boot.display())))?;
    let release =
        vmlinuz.file_name().unwrap_or_default().to_string_lossy()["vmlinuz-".len()..].to_string();
    let staged = work.join("staged");
    std::fs::create_dir_all(&staged).map_err(VmError::io("create", &staged))?;
    std::fs::rename(&vmlinuz, staged.join("vmlinuz")).map_err(VmError::io("move", &vmlinuz))?;
    let mods = x.join("lib/modules").join(&release);
    std::fs::rename(&mods, staged.join("modules")).map_err(VmError::io("move", &mods))?;
    std::fs::write(staged.join(".complete"), &release).map_err(VmError::io("write", &staged))?;
    let dest = cache.join("kernel").join(&release);
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::rename(&staged, &dest).map_err(VmError::io("move kernel to", &dest))
}

/// The `depends=` of a module's `.modinfo` section (NUL-separated `key=value` strings).
pub fn modinfo_depends(ko: &[u8]) -> Vec<String> {
    modinfo_values(ko, "depends")
        .first()
        .map(|v| {
            v.split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.replace('-', "_"))
                .collect()
        })
        .unwrap_or_default()
}

/// Every value of `key` in a module's `.modinfo` strings (`alias` has many).
pub fn modinfo_values(ko: &[u8], key: &str) -> Vec<String> {
    let pat = format!("\0{key}=");
    let pat = pat.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = ko[from..].windows(pat.len()).position(|w| w == pat) {
        let rest = &ko[from + at + pat.len()..];
        let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
        out.push(String::from_utf8_lossy(&rest[..end]).into_owned());
        from += at + pat.len() + end;
    }
    out
}

fn index_modules(dir: &Path, out: &mut HashMap<String, PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir)
        .map_err(VmError::io("read", dir))?
        .flatten()
    {
        let p = e.path();
        let ft = e.file_type().map_err(VmError::io("stat", &p))?;
        if ft.is_dir() {
            index_modules(&p, out)?;
        } else {
            let n = e.file_name().to_string_lossy().into_owned();
            for ext in [".ko", ".ko.xz", ".ko.zst", ".ko.gz"] {
                if let Some(stem) = n.strip_suffix(ext) {
                    out.entry(stem.replace('-', "_")).or_insert(p.clone());
                }
            }
        }
    }
    Ok(())
}

/// `wanted` and their dependencies, dependencies first, as (name, path of the .ko).
pub fn resolve_modules(modules: &Path, wanted: &[&str]) -> Result<Vec<(String, PathBuf)>> {
    let mut index = HashMap::new();
    index_modules(modules, &mut index)?;
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    fn visit(
        name: &str,
        index: &HashMap<String, PathBuf>,
        modules: &Path,
        seen: &mut HashSet<String>,
        order: &mut Vec<(String, PathBuf)>,
    ) -> Result<()> {
        if !seen.insert(name.to_string()) {
            return Ok(());
        }
        let path = index.get(name).ok_or_else(|| VmError::ModuleMissing {
            name: name.into(),
            dir: modules.to_path_buf(),
        })?;
        if !path.to_string_lossy().ends_with(".ko") {
            return Err(VmError::ModuleCompressed { path: path.clone() });
        }
        let bytes = std::fs::read(path).map_err(VmError::io("read", path))?;
        for d in modinfo_depends(&bytes) {
            visit(&d, index, modules, seen, order)?;
        }
        order.push((name.to_string(), path.clone()));
        Ok(())
    }
    for w in wanted {
        visit(w, &index, modules, &mut seen, &mut order)?;
    }
    Ok(order)
}

/// Build (or find in the cache) the initramfs holding `agent` as /init and the modules; returns
/// its path. The name is the SHA-256 of the contents. A second index, keyed by the agent file's
/// identity (path, inode, size, mtime) and the kernel's, finds it again without reading the agent
/// and the modules (tens of milliseconds and megabytes of heap on every VM start otherwise).
pub fn ensure_initramfs(cache: &Path, kernel: &Kernel, agent: &Path) -> Result<PathBuf> {
    let index = initramfs_index(cache, kernel, agent);
    if let Some(found) = index
        .as_ref()
        .and_then(|i| std::fs::read_to_string(i).ok())
        .map(|name| cache.join("initramfs").join(name.trim()))
        .filter(|p| p.is_file())
    {
        // Used now: its index entry's mtime keeps it from the garbage collection (the file's
        // own is part of its identity, which templates record).
        if let Some(i) = &index {
            let _ = std::fs::File::options()
                .append(true)
                .open(i)
                .and_then(|f| f.set_modified(std::time::SystemTime::now()));
        }
        return Ok(found);
    }
    let path = build_initramfs(cache, kernel, agent)?;
    if let (Some(i), Some(name)) = (index, path.file_name()) {
        let tmp = i.with_extension(format!("tmp-{}", std::process::id()));
        let _ = std::fs::write(&tmp, name.to_string_lossy().as_bytes())
            .and_then(|()| std::fs::rename(&tmp, &i));
    }
    collect_initramfs_garbage(
        &cache.join("initramfs"),
        &path,
        &crate::template::inputs_in_use(&crate::template::store_dir()),
    );
    Ok(path)
}

/// An initramfs no template was made from is removed this long after it was built.
const INITRAMFS_KEPT: std::time::Duration = std::time::Duration::from_secs(3600);

/// When a new initramfs is built (a new agent or kernel): remove the ones no template was made
/// from, neither built nor looked up (their index entry is touched on use) within
/// [`INITRAMFS_KEPT`], and the index entries that name a removed one. Every upgrade of moat would
/// otherwise leave 7-20 MB behind for good.
fn collect_initramfs_garbage(dir: &Path, keep: &Path, used: &std::collections::HashSet<PathBuf>) {
    let old = |m| modified_before(m, INITRAMFS_KEPT);
    let looked_up: std::collections::HashSet<PathBuf> = std::fs::read_dir(dir.join("by-agent"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| !old(e.metadata()))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .map(|name| dir.join(name.trim()))
        .collect();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p != keep
            && old(e.metadata())
            && p.extension().is_some_and(|x| x == "cpio")
            && !used.contains(&p)
            && !looked_up.contains(&p)
        {
            let _ = std::fs::remove_file(&p);
        }
    }
    for e in std::fs::read_dir(dir.join("by-agent"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let named = std::fs::read_to_string(e.path()).unwrap_or_default();
        if !dir.join(named.trim()).is_file() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Whether the file of `m` was last modified more than `age` ago (`false` when unknown): the
/// age rule of the cache's garbage collections.
pub(crate) fn modified_before(
    m: std::io::Result<std::fs::Metadata>,
    age: std::time::Duration,
) -> bool {
    m.and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|a| a > age)
}

/// A file's identity without reading it: path, inode, size and mtime (a replaced or rewritten
/// file changes it). `None` when it cannot be stat'ed.
pub(crate) fn file_identity(p: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    Some(format!(
        "{} {} {} {} {}",
        p.display(),
        m.ino(),
        m.len(),
        m.mtime(),
        m.mtime_nsec()
    ))
}

/// The first `bytes` bytes of the SHA-256 of `data`, in hex: the names of cached files.
pub(crate) fn short_hash(data: &[u8], bytes: usize) -> String {
    Sha256::digest(data)
        .iter()
        .take(bytes)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Where [`ensure_initramfs`] records which initramfs `agent` and `kernel` made.
fn initramfs_index(cache: &Path, kernel: &Kernel, agent: &Path) -> Option<PathBuf> {
    let key = short_hash(
        format!(
            "initramfs-2\n{}\n{} {}\n{}\n{}\n",
            file_identity(agent)?,
            kernel.release,
            file_identity(&kernel.modules)?,
            GUEST_MODULES.join(","),
            ON_DEMAND_MODULES.join(",")
        )
        .as_bytes(),
        16,
    );
    let dir = cache.join("initramfs").join("by-agent");
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir.join(key))
}

fn build_initramfs(cache: &Path, kernel: &Kernel, agent: &Path) -> Result<PathBuf> {
    let agent_bytes = std::fs::read(agent).map_err(VmError::io("read agent binary", agent))?;
    if !agent_bytes.starts_with(b"\x7fELF") {
        return Err(VmError::AgentBinary {
            path: agent.to_path_buf(),
            reason: "not an ELF executable".into(),
        });
    }
    let libs = crate::agent::runtime_files(agent, &agent_bytes)?;
    let modules = resolve_modules(&kernel.modules, GUEST_MODULES)?;
    let on_demand = on_demand_modules(&kernel.modules, ON_DEMAND_MODULES, &modules)?;
    let mut w = CpioWriter::new(Vec::with_capacity(agent_bytes.len() + (1 << 20)));
    let io = |e| VmError::Io {
        what: "write initramfs entry",
        path: agent.to_path_buf(),
        source: e,
    };
    for d in [
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "newroot",
        "lib",
        "lib/moat-modules",
    ] {
        w.dir(d, 0o755).map_err(io)?;
    }
    w.char_device("dev/console", 0o600, 5, 1).map_err(io)?;
    w.file("init", 0o755, &agent_bytes).map_err(io)?;
    // The directories above `rel` not written yet.
    let mut made: std::collections::BTreeSet<String> = ["lib".to_owned()].into();
    let mut parents = |w: &mut CpioWriter<Vec<u8>>, rel: &str| -> std::io::Result<()> {
        let mut dir = String::new();
        for part in rel
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map_or(&[][..], |x| x.1)
        {
            dir = if dir.is_empty() {
                (*part).to_owned()
            } else {
                format!("{dir}/{part}")
            };
            if made.insert(dir.clone()) {
                w.dir(&dir, 0o755)?;
            }
        }
        Ok(())
    };
    // A dynamically linked agent: its interpreter and libraries at the paths it asks for.
    for (guest, host) in &libs {
        let rel = guest.trim_start_matches('/');
        parents(&mut w, rel).map_err(io)?;
        let bytes = std::fs::read(host).map_err(VmError::io("read agent library", host))?;
        w.file(rel, 0o755, &bytes).map_err(io)?;
    }
    let on_demand_dir = format!("lib/modules/{}", kernel.release);
    for (rel, bytes) in &on_demand {
        let rel = format!("{on_demand_dir}/{rel}");
        parents(&mut w, &rel).map_err(io)?;
        w.file(&rel, 0o644, bytes).map_err(io)?;
    }
    for (i, (name, path)) in modules.iter().enumerate() {
        let bytes = std::fs::read(path).map_err(VmError::io("read module", path))?;
        w.file(&format!("lib/moat-modules/{i:02}-{name}.ko"), 0o644, &bytes)
            .map_err(io)?;
    }
    let bytes = w.finish().map_err(io)?;
    let hex = short_hash(&bytes, 16);
    let dir = cache.join("initramfs");
    std::fs::create_dir_all(&dir).map_err(VmError::io("create", &dir))?;
    let path = dir.join(format!("{hex}.cpio"));
    if !path.exists() {
        let tmp = dir.join(format!(".{hex}.{}", std::process::id()));
        std::fs::write(&tmp, &bytes).map_err(VmError::io("write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(VmError::io("rename", &path))?;
    }
    Ok(path)
}

/// The files of modules `names` and their dependencies (those not loaded at boot: `boot`),
/// relative to `lib/modules/<release>/`: each `.ko` at its path in the kernel package,
/// `modules.dep` and `modules.alias`.
fn on_demand_modules(
    modules: &Path,
    names: &[&str],
    boot: &[(String, PathBuf)],
) -> Result<Vec<(String, Vec<u8>)>> {
    let at_boot: HashSet<&str> = boot.iter().map(|(n, _)| n.as_str()).collect();
    let wanted = resolve_modules(modules, names)?;
    let wanted: Vec<_> = wanted
        .into_iter()
        .filter(|(n, _)| !at_boot.contains(n.as_str()))
        .collect();
    let rel_of = |p: &Path| {
        p.strip_prefix(modules)
            .map(|r| r.to_string_lossy().into_owned())
            .map_err(|_| {
                VmError::Config(format!(
                    "module {} outside {}",
                    p.display(),
                    modules.display()
                ))
            })
    };
    let rels: HashMap<&str, String> = wanted
        .iter()
        .map(|(n, p)| Ok((n.as_str(), rel_of(p)?)))
        .collect::<Result<_>>()?;
    let (mut dep, mut alias) = (String::new(), String::new());
    let mut files = Vec::new();
    for (name, path) in &wanted {
        let bytes = std::fs::read(path).map_err(VmError::io("read module", path))?;
        let rel = &rels[name.as_str()];
        let deps: Vec<&str> = modinfo_depends(&bytes)
            .iter()
            .filter_map(|d| rels.get(d.as_str()).map(String::as_str))
            .collect();
        dep.push_str(&format!("{rel}: {}\n", deps.join(" ")));
        for a in modinfo_values(&bytes, "alias") {
            if !a.is_empty() && !a.contains(char::is_whitespace) {
                alias.push_str(&format!("alias {a} {name}\n"));
            }
        }
        files.push((rel.clone(), bytes));
    }
    files.push(("modules.dep".into(), dep.into_bytes()));
    files.push(("modules.alias".into(), alias.into_bytes()));
    Ok(files)
}

/// Build an ext4 image at `out` holding `dir` (e2fsprogs' `mkfs.ext4 -d`, no mount needed),
/// sized to the tree plus headroom.
pub fn build_ext4_image(dir: &Path, out: &Path) -> Result<()> {
    fn size_of(p: &Path) -> u64 {
        let Ok(m) = std::fs::symlink_metadata(p) else {
            return 0;
        };
        if m.is_dir() {
            std::fs::read_dir(p)
                .map(|rd| rd.flatten().map(|e| size_of(&e.path()) + 4096).sum())
                .unwrap_or(0)
        } else {
            m.len()
        }
    }
    let kib = (size_of(dir) * 5 / 4) / 1024 + 16 * 1024;
    run(Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-O",
            "^has_journal",
            "-E",
            "root_owner=0:0",
            "-d",
        ])
        .arg(dir)
        .arg(out)
        .arg(format!("{kib}k")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_initramfs_files_nothing_uses_are_removed_with_their_index() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        std::fs::create_dir(dir.join("by-agent")).unwrap();
        let day_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(86400);
        for name in [
            "old.cpio",
            "used.cpio",
            "new.cpio",
            "young.cpio",
            "looked-up.cpio",
        ] {
            let f = std::fs::File::create(dir.join(name)).unwrap();
            if name != "young.cpio" {
                f.set_modified(day_ago).unwrap();
            }
            std::fs::write(dir.join("by-agent").join(name), name).unwrap();
            if name != "looked-up.cpio" {
                std::fs::File::options()
                    .append(true)
                    .open(dir.join("by-agent").join(name))
                    .unwrap()
                    .set_modified(day_ago)
                    .unwrap();
            }
        }
        let used = [dir.join("used.cpio")].into_iter().collect();
        collect_initramfs_garbage(dir, &dir.join("new.cpio"), &used);
        let left = |sub: &str| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(dir.join(sub))
                .unwrap()
                .flatten()
                .filter(|e| e.path().is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        let kept = ["looked-up.cpio", "new.cpio", "used.cpio", "young.cpio"];
        assert_eq!(left(""), kept);
        assert_eq!(left("by-agent"), kept);
    }

    #[test]
    fn modinfo_depends_reads_the_list() {
        let ko = b"junk\0license=GPL\0depends=virtio,virtio_ring\0name=virtio_blk\0";
        assert_eq!(modinfo_depends(ko), vec!["virtio", "virtio_ring"]);
        assert!(modinfo_depends(b"\0depends=\0").is_empty());
        assert!(modinfo_depends(b"nothing").is_empty());
        let ko = b"\0alias=rtnl-link-bridge\0depends=stp,llc\0alias=net-pf-7\0";
        assert_eq!(
            modinfo_values(ko, "alias"),
            vec!["rtnl-link-bridge", "net-pf-7"]
        );
        assert_eq!(modinfo_depends(ko), vec!["stp", "llc"]);
    }

    #[test]
    fn on_demand_modules_carry_their_dependencies_an_index_and_aliases() {
        let dir = tempfile::tempdir().unwrap();
        let ko = |rel: &str, info: &str| {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, format!("\x7fELF\0{info}\0")).unwrap();
        };
        ko(
            "kernel/net/bridge/bridge.ko",
            "alias=rtnl-link-bridge\0depends=stp,llc",
        );
        ko("kernel/net/802/stp.ko", "depends=llc");
        ko("kernel/net/llc/llc.ko", "depends=");
        // Loaded at boot: neither carried again nor listed.
        let boot = [("llc".to_owned(), dir.path().join("kernel/net/llc/llc.ko"))];
        let files = on_demand_modules(dir.path(), &["bridge"], &boot).unwrap();
        let get = |n: &str| {
            let f = files.iter().find(|(r, _)| r == n);
            f.map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        };
        assert!(get("kernel/net/llc/llc.ko").is_none());
        assert!(get("kernel/net/802/stp.ko").is_some());
        assert_eq!(
            get("modules.dep").unwrap(),
            "kernel/net/802/stp.ko: \nkernel/net/bridge/bridge.ko: kernel/net/802/stp.ko\n"
        );
        assert_eq!(
            get("modules.alias").unwrap(),
            "alias rtnl-link-bridge bridge\n"
        );
        assert!(on_demand_modules(dir.path(), &["veth"], &[]).is_err());
    }
}
