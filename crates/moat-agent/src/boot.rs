//! Guest boot: the steps a PID 1 on an initramfs takes before it can serve requests. Mount the
//! kernel filesystems, load the kernel modules shipped in the initramfs (in the order the host
//! resolved), move onto a tmpfs root (pivot_root(2) refuses the initramfs itself, and containers
//! need it), and find the virtio-serial port the host named.
//!
//! What it must never do: guess device numbers. The port is found by its name, a disk by the
//! serial the host gave it.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{mount, MsFlags};

use crate::error::{AgentFailure, Result};
use crate::log;

/// Directory of the initramfs holding the `.ko` files, loaded in name order (`NN-name.ko`).
pub const MODULE_DIR: &str = "/lib/moat-modules";

fn do_mount(
    src: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    let _ = std::fs::create_dir_all(target);
    mount(Some(src), target, Some(fstype), flags, data).map_err(|e| AgentFailure::Sys {
        what: format!("mount {fstype} at {target}"),
        errno: e,
    })
}

/// Everything before serving: returns the paths of the agent's ports (`moat.agent_ports=N` on
/// the command line: N of them, else one).
pub fn boot() -> Result<Vec<PathBuf>> {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    do_mount("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID, None)?;
    do_mount("proc", "/proc", "proc", nosuid, None)?;
    do_mount("sysfs", "/sys", "sysfs", nosuid, None)?;
    log::open_kmsg();
    load_modules(Path::new(MODULE_DIR))?;
    switch_to_tmpfs()?;
    do_mount("cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid, None)?;
    do_mount(
        "tmpfs",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=755"),
    )?;
    do_mount(
        "tmpfs",
        "/tmp",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None,
    )?;
    // Every sandbox wants its loopback: up before a template is saved, so that a clone with no
    // interfaces to configure needs no network request at all.
    crate::net::configure(&[], &[])?;
    // Likewise the parent of the containers' cgroups (`/moat`, their default) with every
    // controller enabled down to it: done once in the template instead of in each clone's first
    // create (the kernel's controller set-up is a large share of a clone's create under TCG).
    let warm = moat_cgroups::Cgroup::resolve(None, "boot", false)
        .and_then(|cg| cg.create().map(|()| cg))
        .and_then(|cg| cg.destroy());
    if let Err(e) = warm {
        log::error(&format!("prepare the cgroup parent /moat: {e}"));
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let n = cmdline
        .split_whitespace()
        .find_map(|w| {
            w.strip_prefix(moat_agent_proto::AGENT_PORTS_FLAG)?
                .strip_prefix('=')
        })
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(1)
        .clamp(1, 16);
    (0..n)
        .map(|i| {
            find_port(
                &moat_agent_proto::agent_port_name(i),
                Duration::from_secs(10),
            )
        })
        .collect()
}

/// Load every module of `dir` in name order; an already loaded (or built-in) one is fine.
fn load_modules(dir: &Path) -> Result<()> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(AgentFailure::io("read module dir", dir, e)),
    };
    files.sort();
    for f in files {
        let file = File::open(&f).map_err(|e| AgentFailure::io("open module", &f, e))?;
        match nix::kmod::finit_module(file.as_fd(), c"", nix::kmod::ModuleInitFlags::empty()) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => {
                return Err(AgentFailure::Sys {
                    what: format!("finit_module {}", f.display()),
                    errno: e,
                })
            }
        }
        // The initramfs is never freed; at least drop the file's pages.
        let _ = std::fs::remove_file(&f);
    }
    Ok(())
}

/// switch_root(8) without exec: a tmpfs becomes `/` (MS_MOVE + chroot), carrying the kernel
/// filesystems along, so that containers can pivot_root(2) later.
fn switch_to_tmpfs() -> Result<()> {
    let new = "/newroot";
    do_mount("tmpfs", new, "tmpfs", MsFlags::MS_NOSUID, Some("mode=755"))?;
    for m in ["/dev", "/proc", "/sys"] {
        let target = format!("{new}{m}");
        let _ = std::fs::create_dir_all(&target);
        mount(
            Some(m),
            target.as_str(),
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(|e| AgentFailure::Sys {
            what: format!("move {m} to {target}"),
            errno: e,
        })?;
    }
    for d in ["run", "tmp"] {
        let _ = std::fs::create_dir_all(format!("{new}/{d}"));
    }
    keep_initramfs_files(new)?;
    let sys = |what: &str| {
        let what = what.to_string();
        move |e| AgentFailure::Sys { what, errno: e }
    };
    nix::unistd::chdir(new).map_err(sys("chdir /newroot"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(sys("move /newroot to /"))?;
    nix::unistd::chroot(".").map_err(sys("chroot /newroot"))?;
    nix::unistd::chdir("/").map_err(sys("chdir /"))?;
    Ok(())
}

/// What the new root keeps of the initramfs, read-only: its other top-level directories (the
/// on-demand modules under /lib/modules, a dynamically linked agent's libraries) and the agent
/// itself as /sbin/modprobe, which the kernel runs in this root to load a module a container
/// asks for (`request_module`, [`crate::modprobe`]).
fn keep_initramfs_files(new: &str) -> Result<()> {
    let sys = |what: String| move |errno| AgentFailure::Sys { what, errno };
    let bind_ro = |src: &Path, target: &Path| -> Result<()> {
        let what = format!("bind {} at {} read-only", src.display(), target.display());
        mount(
            Some(src),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(sys(what.clone()))?;
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
            None::<&str>,
        )
        .map_err(sys(what))
    };
    let rd = std::fs::read_dir("/").map_err(|e| AgentFailure::io("read", "/", e))?;
    for e in rd.flatten() {
        let name = e.file_name();
        let skip = ["dev", "proc", "sys", "run", "tmp", "newroot"];
        if !e.file_type().is_ok_and(|t| t.is_dir()) || skip.contains(&&*name.to_string_lossy()) {
            continue;
        }
        let target = Path::new(new).join(&name);
        std::fs::create_dir_all(&target).map_err(|e| AgentFailure::io("create", &target, e))?;
        bind_ro(&e.path(), &target)?;
    }
    let modprobe = Path::new(new).join(crate::modprobe::PATH.trim_start_matches('/'));
    if let Some(d) = modprobe.parent() {
        std::fs::create_dir_all(d).map_err(|e| AgentFailure::io("create", d, e))?;
    }
    std::fs::write(&modprobe, b"").map_err(|e| AgentFailure::io("create", &modprobe, e))?;
    bind_ro(Path::new("/init"), &modprobe)
}

/// In a child the agent forks for itself (the share's relay, the pod's pid namespace): never
/// the guest OOM killer's pick. PID 1 is exempt, its children are not, and a guest out of
/// memory must kill a container's process, not the relay every container's files go through.
pub fn never_oom_killed() {
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "-1000") {
        log::error(&format!("set oom_score_adj -1000: {e}"));
    }
}

/// The /dev node of the virtio-serial port named `name` (the `name=` of QEMU's virtserialport).
pub fn find_port(name: &str, timeout: Duration) -> Result<PathBuf> {
    let start = Instant::now();
    let class = Path::new("/sys/class/virtio-ports");
    loop {
        if let Ok(rd) = std::fs::read_dir(class) {
            for e in rd.flatten() {
                let n = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
                if n.trim_end() == name {
                    let dev = Path::new("/dev").join(e.file_name());
                    if dev.exists() {
                        return Ok(dev);
                    }
                }
            }
        }
        if start.elapsed() > timeout {
            return Err(AgentFailure::NotFound(format!(
                "virtio-serial port named {name:?} under {}",
                class.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The /dev node of the block device whose virtio serial is `serial`.
pub fn find_disk(serial: &str, timeout: Duration) -> Result<PathBuf> {
    let start = Instant::now();
    loop {
        if let Ok(rd) = std::fs::read_dir("/sys/block") {
            for e in rd.flatten() {
                let s = std::fs::read_to_string(e.path().join("serial")).unwrap_or_default();
                if s.trim_end() == serial {
                    return Ok(Path::new("/dev").join(e.file_name()));
                }
            }
        }
        if start.elapsed() > timeout {
            return Err(AgentFailure::NotFound(format!(
                "disk with serial {serial:?} under /sys/block"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kill what is left, flush the disks and power the VM off. Never returns.
pub fn power_off() -> ! {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-1), nix::sys::signal::SIGKILL);
    nix::unistd::sync();
    let e = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    log::error(&format!("power off: {e:?}"));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
