//! VM templates: boot a guest once per machine shape, save it, and start each later VM of that
//! shape as a *clone* resumed from the saved state instead of booting a kernel (Kata's VM
//! templating, Firecracker's snapshots; measured mechanism in shared/notes/vm-template-facts.md).
//!
//! - **Template**: QEMU boots with its guest RAM in a shared file (`memory-backend-file`,
//!   `share=on`) and `moat.template` on the kernel command line. Once the agent has answered,
//!   it is asked to prepare (drop caches; survive the host going away) and its device state is
//!   migrated with `x-ignore-shared` (the RAM stays in the file) into `state` over QMP.
//! - **Clone**: QEMU starts with the same machine and devices, its RAM mapped from the template's
//!   file `MAP_PRIVATE` (`share=off`: copy-on-write, the file is never written, every clone
//!   shares its pages), `-incoming defer`; over QMP `x-ignore-shared` and `migrate-incoming` on a
//!   socket of its jail, the host streams `state`, and the VM resumes by itself (the template was
//!   saved running, so no `cont`). The first request to its agent makes it unique ([`moat_agent_proto::Restore`]:
//!   entropy and a CRNG reseed, wall clock, hostname, machine-id, MACs).
//! - **What may differ** between template and clone is what a device's backend points to: the
//!   agent sockets, the console log, the taps (their MACs are the template's, the agent sets the
//!   real ones), the disks' files. Disks must have the template's capacity ([`DISK_BYTES`]:
//!   the guest read it at boot), the agent drops the stale cache of a disk before mounting it.
//! - **Shape and key**: a template is made for (QEMU binary, accelerator, kernel, initramfs,
//!   command line, memory, vCPUs, agent ports, NICs, disks and their read-only flags); the key
//!   is the SHA-256 of those (files by path, size and mtime; the initramfs is named by its
//!   content), so a new kernel, agent or QEMU makes a new template. Stored under
//!   `<cache>/templates/<key>/` (mode 0700, built in a temporary directory and renamed, one
//!   builder at a time per key under a lock), used templates are touched and others older than
//!   [`GC_AFTER`] removed when a new one is built.
//! - **A shared directory** cannot be virtiofs in a clone (QEMU 7.2's vhost-user-fs device cannot
//!   be migrated, and vhost-user needs guest RAM that its backend maps shared, which a
//!   copy-on-write clone's is not): every template has one more serial port, and a clone that
//!   shares a directory gets it as FUSE over that port, served by `moat-vmfs`
//!   ([`crate::fuse_share`], started while the state streams in). docs/vm-templates.md.
//! - **Failures**: a template that cannot be built or resumed is removed and the VM boots cold;
//!   the caller prints a one-line notice ([`crate::qemu`]).
//!
//! What it must never do: let a clone write the template's file, run anything in a clone before
//! it was made unique, or leave a half-built template where a complete one is looked for.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use moat_agent_proto::{Reply, Request, Restore};

use crate::error::{Result, VmError};
use crate::qemu::{new_run_dir, Launch, Qemu, QemuVm, INCOMING_SOCKET, JAIL_DIR, QMP_SOCKET};
use crate::{Disk, VmConfig, VmInstance};

/// The capacity of every disk of a templated VM: the template's placeholder disks are sparse
/// files of this size, and a clone's disks must be as long (make them so with `set_len`).
pub const DISK_BYTES: u64 = 8 << 30;

/// Templates not used for this long are removed when another is built.
pub const GC_AFTER: Duration = Duration::from_secs(14 * 24 * 3600);

/// Bumped when what a template holds changes meaning.
const FORMAT: &str = "moat-vm-template-5";
const MEMORY: &str = "memory";
const STATE: &str = "state";
const META: &str = "meta";
/// The files a template was made from (QEMU, kernel, initramfs): `path\tidentity` per line.
const INPUTS: &str = "inputs";

/// On a container's (or a pod's) spec, `"false"`: a VM that shares directories boots cold and
/// shares them over virtiofs instead of being a clone with its share as FUSE over a serial port:
/// 4-5 s more to start under TCG, several times the write throughput (docs/vm-templates.md).
pub const ANNOTATION: &str = "io.moat.vm.template";

/// Whether the [`ANNOTATION`] value `v` lets a VM be a clone.
pub fn wanted(v: Option<&str>) -> bool {
    v != Some("false")
}

/// Templates are on unless `MOAT_VM_TEMPLATES=0`.
pub fn enabled() -> bool {
    std::env::var("MOAT_VM_TEMPLATES").map_or(true, |v| v != "0")
}

/// Where templates live: `<cache>/templates`.
pub fn store_dir() -> PathBuf {
    crate::assets::cache_dir().join("templates")
}

/// The MAC a template gives its NIC `i` (the agent of a clone sets the real one).
pub fn template_mac(i: usize) -> String {
    format!("02:6d:6f:61:74:{:02x}", i & 0xff)
}

/// Why `cfg` cannot be cloned from a template, if it cannot.
pub fn unsupported(cfg: &VmConfig) -> Option<String> {
    for d in &cfg.disks {
        match std::fs::metadata(&d.path) {
            Ok(m) if m.len() == DISK_BYTES => {}
            Ok(m) => {
                return Some(format!(
                    "disk {} is {} bytes, not the template's {DISK_BYTES}",
                    d.path.display(),
                    m.len()
                ))
            }
            Err(e) => return Some(format!("disk {}: {e}", d.path.display())),
        }
    }
    None
}

fn file_id(p: &Path) -> String {
    crate::assets::file_identity(p).unwrap_or_else(|| format!("{} missing", p.display()))
}

/// The kernel command line of templates and clones of `cfg` (the sandbox mode travels in
/// [`Restore::single`] instead).
fn template_cmdline(cfg: &VmConfig) -> String {
    cfg.cmdline
        .split_whitespace()
        .filter(|w| *w != moat_agent_proto::SINGLE_SANDBOX_FLAG)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The key of `cfg`'s template (see the module doc).
pub fn key(qemu: &Qemu, cfg: &VmConfig) -> String {
    let mut t = cfg.clone();
    t.cmdline = template_cmdline(cfg);
    let lines = [
        FORMAT.to_string(),
        file_id(&crate::qemu::resolve_binary(&qemu.binary)),
        qemu.accel.as_str().to_string(),
        file_id(&cfg.kernel),
        file_id(&cfg.initramfs),
        qemu.cmdline(&t),
        format!("{} MiB {} vcpus", cfg.memory_mib, cfg.vcpus),
        format!("{} ports {} nics", cfg.agent_ports.max(1), cfg.nics.len()),
        cfg.disks
            .iter()
            .map(|d| if d.readonly { "ro" } else { "rw" })
            .collect::<Vec<_>>()
            .join(","),
    ];
    crate::assets::short_hash(lines.join("\n").as_bytes(), 16)
}

/// The configuration QEMU gets for a template (`tpl`: its directory) or a clone of `cfg`: the
/// template's command line and MACs; a template's disks are sparse placeholders in `tpl`.
fn shaped(cfg: &VmConfig, tpl: &Path, template: bool) -> VmConfig {
    let mut c = cfg.clone();
    c.cmdline = template_cmdline(cfg);
    c.shared = None;
    c.template = false;
    for (i, n) in c.nics.iter_mut().enumerate() {
        n.mac = template_mac(i);
        if template {
            // QEMU creates the tap in the template's own (empty) network namespace.
            n.tap = format!("moattpl{i}");
        }
    }
    if template {
        c.netns = None;
        for (i, d) in c.disks.iter_mut().enumerate() {
            *d = Disk {
                path: tpl.join(format!("disk{i}")),
                serial: format!("template{i}"),
                readonly: d.readonly,
            };
        }
    }
    c
}

/// A clone of `cfg`'s template, building the template first when there is none. `Ok(None)`:
/// `cfg` cannot be templated (boot it cold). An error names the template, which was removed
/// if it was broken.
pub fn boot_clone(qemu: &Qemu, cfg: &VmConfig) -> Result<Option<QemuVm>> {
    boot_clone_in(qemu, cfg, &store_dir())
}

/// [`boot_clone`] with the templates kept in `store`.
pub fn boot_clone_in(qemu: &Qemu, cfg: &VmConfig, store: &Path) -> Result<Option<QemuVm>> {
    if unsupported(cfg).is_some() {
        return Ok(None);
    }
    if cfg.shared.is_some() {
        // Without its server a clone cannot share the directory: a cold boot (virtiofs) after
        // the caller's notice, the template left alone.
        crate::fuse_share::find_server()
            .map_err(|e| VmError::Config(format!("a clone cannot share its directory: {e}")))?;
    }
    let key = key(qemu, cfg);
    let dir = store.join(&key);
    ensure(qemu, cfg, &dir)?;
    match clone(qemu, cfg, &dir) {
        Ok(vm) => Ok(Some(vm)),
        // The template resumed; the directory could not be served: it stays.
        Err(e @ VmError::Share(_)) => Err(e),
        Err(e) => {
            // Broken (or unusable here): the next VM of this shape builds a new one.
            let _ = std::fs::remove_dir_all(&dir);
            Err(VmError::Template {
                dir,
                reason: format!("resume a clone: {e}"),
            })
        }
    }
}

/// Make sure the template `dir` for `cfg` exists, building it under its lock if not.
pub fn ensure(qemu: &Qemu, cfg: &VmConfig, dir: &Path) -> Result<()> {
    let complete = |d: &Path| d.join(META).is_file();
    if complete(dir) {
        touch(dir);
        return Ok(());
    }
    let store = dir.parent().unwrap_or(dir).to_path_buf();
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&store)
            .map_err(VmError::io("create", &store))?;
    }
    let lock_path = dir.with_extension("lock");
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(VmError::io("open", &lock_path))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| VmError::io("lock", &lock_path)(e.into()))?;
    if complete(dir) {
        return Ok(());
    }
    let _ = std::fs::remove_dir_all(dir);
    // What builders killed before us left (their QEMU, their directory), and templates unused
    // for long.
    collect_garbage(&store, dir);
    let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let started = Instant::now();
    let built = build(qemu, cfg, &tmp).and_then(|()| {
        std::fs::rename(&tmp, dir).map_err(VmError::io("rename the template to", dir))
    });
    if let Err(e) = built {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(VmError::Template {
            dir: dir.to_path_buf(),
            reason: format!("build: {e}"),
        });
    }
    eprintln!(
        "moat: built the VM template {} in {:.1} s (once per kernel, agent and machine shape)",
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Mark `dir` as used now (its mtime), for the garbage collection.
fn touch(dir: &Path) {
    let now = nix::sys::time::TimeSpec::from_duration(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    );
    let _ = nix::sys::stat::utimensat(
        None,
        dir,
        &now,
        &now,
        nix::sys::stat::UtimensatFlags::FollowSymlink,
    );
}

/// Remove templates unused for [`GC_AFTER`] and temporary directories of builders that died.
fn collect_garbage(store: &Path, keep: &Path) {
    let Ok(rd) = std::fs::read_dir(store) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p == keep || !p.is_dir() {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        let dead_builder = name
            .rsplit_once(".tmp-")
            .and_then(|(_, pid)| pid.parse::<i32>().ok())
            .is_some_and(|pid| {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err()
            });
        let old = crate::assets::modified_before(e.metadata(), GC_AFTER);
        if dead_builder {
            // A builder killed with -9 leaves its template QEMU running on the directory.
            kill_users_of(&p);
        }
        if dead_builder || (!name.contains(".tmp-") && (old || unreachable(&p))) {
            let _ = std::fs::remove_dir_all(&p);
            let _ = std::fs::remove_file(p.with_extension("lock"));
        }
    }
}

/// A complete template no VM can be a clone of any more: made by another format of moat, or
/// from a QEMU, kernel or initramfs that changed since (its key named them; a new agent makes a
/// new initramfs). Without this, every upgrade would leave one template behind for weeks.
fn unreachable(dir: &Path) -> bool {
    let Ok(meta) = std::fs::read_to_string(dir.join(META)) else {
        // Not complete: a builder's (it holds the lock) or a broken one (the age rule).
        return false;
    };
    if meta.lines().next() != Some(FORMAT) {
        return true;
    }
    let Ok(inputs) = std::fs::read_to_string(dir.join(INPUTS)) else {
        return true;
    };
    inputs.lines().any(|l| {
        let (path, id) = l.split_once('\t').unwrap_or((l, ""));
        crate::assets::file_identity(Path::new(path)).as_deref() != Some(id)
    })
}

/// The files templates in `store` were made from (see [`INPUTS`]): what the initramfs cache
/// must keep.
pub(crate) fn inputs_in_use(store: &Path) -> std::collections::HashSet<PathBuf> {
    let mut out = std::collections::HashSet::new();
    for e in std::fs::read_dir(store).into_iter().flatten().flatten() {
        if let Ok(text) = std::fs::read_to_string(e.path().join(INPUTS)) {
            out.extend(
                text.lines()
                    .filter_map(|l| l.split_once('\t'))
                    .map(|(p, _)| PathBuf::from(p)),
            );
        }
    }
    out
}

/// Kill every process whose command line names `dir` (a dead builder's template QEMU).
fn kill_users_of(dir: &Path) {
    let needle = dir.display().to_string();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Boot a template of `cfg`'s shape and save it into `tmp`.
fn build(qemu: &Qemu, cfg: &VmConfig, tmp: &Path) -> Result<()> {
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(tmp)
            .map_err(VmError::io("create", tmp))?;
    }
    let mut t = shaped(cfg, tmp, true);
    // The builder's run dir (sockets, jail) inside the half-built template, so that whoever
    // removes one after a builder was killed with -9 removes both; unless its sockets' paths
    // would not fit a unix socket address (108 bytes): `/moat-vm-PID-N/agent-15.sock` is at
    // most 34 more.
    if tmp.as_os_str().len() + 34 < 108 {
        t.run_parent = tmp.to_path_buf();
    }
    for d in &t.disks {
        let f = std::fs::File::create(&d.path).map_err(VmError::io("create", &d.path))?;
        f.set_len(DISK_BYTES)
            .map_err(VmError::io("size the placeholder disk", &d.path))?;
    }
    let memory = tmp.join(MEMORY);
    let run = new_run_dir(&t)?;
    let child = match qemu.spawn(&t, &run, Launch::Template { memory: &memory }, None) {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&run);
            return Err(e);
        }
    };
    // Dropping `vm` kills QEMU and removes the run dir.
    let mut vm = QemuVm::new(child, None, run.clone());
    vm.attach_agent(t.agent_timeout)?;
    match vm.agent()?.request(Request::PrepareTemplate)? {
        Reply::Done => {}
        other => {
            return Err(VmError::UnexpectedReply {
                request: "prepare the template".into(),
                reply: format!("{other:?}"),
            })
        }
    }
    // Saved running (the migration stops the VM for its last step): clones then run as soon as
    // they have loaded the state, without a `cont`.
    let mut qmp = crate::qmp::Qmp::connect(&run.join(QMP_SOCKET), Duration::from_secs(10))?;
    qmp.ignore_shared_ram()?;
    // QEMU has chrooted into the jail: it connects to `/out.sock` there.
    let out = run.join(JAIL_DIR).join("out.sock");
    let listener = UnixListener::bind(&out).map_err(VmError::io("listen on", &out))?;
    let state_path = tmp.join(STATE);
    let receiver = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut s, _) = listener.accept()?;
        let mut f = std::fs::File::create(&state_path)?;
        let n = std::io::copy(&mut s, &mut f)?;
        f.sync_all()?;
        Ok(n)
    });
    let migrated = qmp
        .execute(
            "migrate",
            Some(serde_json::json!({ "uri": "unix:/out.sock" })),
        )
        .and_then(|_| qmp.wait_migration(Duration::from_secs(60)));
    let _ = vm.kill();
    migrated?;
    let n = receiver
        .join()
        .map_err(|_| VmError::Config("the state receiver panicked".into()))?
        .map_err(VmError::io("save the template state into", tmp.join(STATE)))?;
    if n == 0 {
        return Err(VmError::Config("QEMU saved an empty state".into()));
    }
    std::fs::File::open(&memory)
        .and_then(|f| f.sync_all())
        .map_err(VmError::io("sync", &memory))?;
    let inputs: String = [
        crate::qemu::resolve_binary(&qemu.binary),
        cfg.kernel.clone(),
        cfg.initramfs.clone(),
    ]
    .iter()
    .map(|p| format!("{}\t{}\n", p.display(), file_id(p)))
    .collect();
    std::fs::write(tmp.join(INPUTS), inputs).map_err(VmError::io("write", tmp.join(INPUTS)))?;
    std::fs::write(tmp.join(META), format!("{FORMAT}\n{}\n", stamp(tmp)?))
        .map_err(VmError::io("write", tmp.join(META)))?;
    Ok(())
}

/// The change times of the template's memory and state files. Clones map the memory private
/// (they never write it), but QEMU 7.2 opens it read-write (see docs/vm-templates.md): a QEMU
/// taken over by its guest could write it. Userspace cannot set a ctime back, so a template
/// whose files changed after the build is refused before anything resumes from it.
fn stamp(dir: &Path) -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for name in [MEMORY, STATE] {
        let p = dir.join(name);
        let m = std::fs::metadata(&p).map_err(VmError::io("stat", &p))?;
        out.push(format!(
            "{name} ctime {}.{:09} size {}",
            m.ctime(),
            m.ctime_nsec(),
            m.size()
        ));
    }
    Ok(out.join("\n"))
}

/// Refuse template `dir` if its files changed since it was built ([`stamp`]).
fn check_unchanged(dir: &Path) -> Result<()> {
    let meta =
        std::fs::read_to_string(dir.join(META)).map_err(VmError::io("read", dir.join(META)))?;
    let recorded = meta.split_once('\n').map_or("", |(_, r)| r.trim_end());
    if recorded != stamp(dir)? {
        return Err(VmError::Config(format!(
            "its memory or state file changed after it was built (recorded {recorded:?})"
        )));
    }
    Ok(())
}

/// Random bytes from the host kernel.
fn host_random(n: usize) -> Result<Vec<u8>> {
    let mut b = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(VmError::io("read", "/dev/urandom"))?;
    Ok(b)
}

/// Resume a clone of the template in `dir` for `cfg`.
fn clone(qemu: &Qemu, cfg: &VmConfig, dir: &Path) -> Result<QemuVm> {
    check_unchanged(dir)?;
    let c = shaped(cfg, dir, false);
    let run = new_run_dir(&c)?;
    let memory = dir.join(MEMORY);
    let child = match qemu.spawn(
        &c,
        &run,
        Launch::Clone { memory: &memory },
        cfg.netns.as_deref(),
    ) {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&run);
            return Err(e);
        }
    };
    let mut vm = QemuVm::new(child, None, run.clone());
    // QEMU listens on a socket of its jail and runs the guest once the state is in (no `cont`:
    // the template was saved running); if it refuses the state, the agent connection below
    // notices.
    let mut server = None;
    let mut resumed = (|| -> Result<()> {
        let mut qmp = crate::qmp::Qmp::connect(&run.join(QMP_SOCKET), Duration::from_secs(10))?;
        // QEMU listens on every socket of its devices once QMP answers: the share's server
        // connects while the state streams in (the guest mounts the share only when asked).
        server = cfg.shared.as_ref().map(|dir| {
            let run = run.clone();
            let dir = dir.clone();
            std::thread::spawn(move || crate::fuse_share::spawn(&run, &dir))
        });
        qmp.ignore_shared_ram()?;
        // QEMU has chrooted into the jail by now: the path is the jail's.
        qmp.execute(
            "migrate-incoming",
            Some(serde_json::json!({ "uri": format!("unix:/{INCOMING_SOCKET}") })),
        )?;
        let sock = run.join(JAIL_DIR).join(INCOMING_SOCKET);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut s = loop {
            match UnixStream::connect(&sock) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => {
                    return Err(VmError::io("connect to", &sock)(e))
                }
                Err(_) => {
                    if let Some(st) = vm.try_wait()? {
                        return Err(VmError::Config(format!("qemu exited: {st}")));
                    }
                    std::thread::sleep(Duration::from_millis(2))
                }
            }
        };
        let state = dir.join(STATE);
        let mut f = std::fs::File::open(&state).map_err(VmError::io("open", &state))?;
        std::io::copy(&mut f, &mut s).map_err(VmError::io("send the state", &state))?;
        let _ = s.flush();
        Ok(())
    })();
    // Whatever happened above: the VM owns the server from here (dropping it on an error kills
    // both).
    if let Some(t) = server {
        match t
            .join()
            .unwrap_or_else(|_| Err(VmError::Config("the share server thread panicked".into())))
        {
            Ok(child) => vm.set_share_server(child),
            // The share's fault, not the template's (a resume that failed too is reported as
            // the template's).
            Err(e) if resumed.is_ok() => return Err(VmError::Share(Box::new(e))),
            Err(e) => resumed = resumed.and(Err(e)),
        }
    }
    if let Err(e) = resumed {
        let stderr = vm.tail("qemu.stderr");
        return Err(VmError::Qmp {
            command: "load the saved state".into(),
            reason: format!("{e}; qemu said: {}", stderr.trim()),
        });
    }
    let entropy = host_random(64)?;
    let machine_id: String = host_random(16)?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let restore = Restore {
        entropy,
        realtime_ns: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
        hostname: format!("moat-{}", &machine_id[..12]),
        machine_id,
        macs: cfg
            .nics
            .iter()
            .enumerate()
            .map(|(i, n)| (template_mac(i), n.mac.clone()))
            .collect(),
        single: cfg
            .cmdline
            .split_whitespace()
            .any(|w| w == moat_agent_proto::SINGLE_SANDBOX_FLAG),
    };
    if let Err(e) = vm.attach_clone(cfg.agent_timeout, restore) {
        // QEMU refused the state and exited: say what it said.
        let stderr = vm.tail("qemu.stderr");
        return Err(if stderr.trim().is_empty() {
            e
        } else {
            VmError::Qmp {
                command: "load the saved state".into(),
                reason: format!("{e}; qemu said: {}", stderr.trim()),
            }
        });
    }
    vm.set_template(dir);
    Ok(vm)
}
