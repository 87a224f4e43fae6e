//! The VM backend of the runtime commands: a bundle whose config.json carries the annotation
//! `io.moat.isolation=vm` runs inside its own QEMU microvm (`moat-vm`), where `moat-agent` runs
//! it with the namespaces backend.
//!
//! `create` builds an ext4 image of the rootfs, boots the VM and creates the container in the
//! guest, then *detaches*: QEMU (its own process group) outlives the command, and `vm.json` in
//! the container's state dir records its pid and start time, the agent socket and the image.
//! Every later command reattaches to the agent over that socket. The guest runs a one-container
//! sandbox (`moat.sandbox=single`): it powers off once the container's init has exited, so
//! "QEMU is gone" is "the container stopped", and `state` never needs to talk to the guest.
//!
//! What it must never do: leave a QEMU process, socket, image or cgroup behind after `delete`,
//! or act on a recycled pid (the pid is checked against its recorded start time, and signalled
//! through a pidfd).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use moat_agent_proto::{ExitStatus, GuestMessage, RootfsDisk, Stream};
use moat_container::state::{now_rfc3339, validate_id, OCI_VERSION};
use moat_container::Store;
use moat_vm::{AgentClient, Disk, Hypervisor, VmConfig};
use serde::{Deserialize, Serialize};

/// The annotation that selects the backend, and its value for a VM.
pub const ISOLATION_ANNOTATION: &str = "io.moat.isolation";
/// Guest RAM on top of the container's memory limit: kernel, agent, page cache of the rootfs.
pub const MEMORY_OVERHEAD_MIB: u64 = 96;
/// Container memory when the spec sets no limit.
pub const DEFAULT_MEMORY_MIB: u64 = 160;
const STATE_FILE: &str = "vm.json";
const ROOTFS_SERIAL: &str = "rootfs0";
const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);

/// Which backend runs a container (a closed set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Namespaces,
    Vm,
}

impl Backend {
    /// The backend a bundle asks for. Cheap for the common case: the config is parsed again only
    /// when its text mentions the annotation.
    pub fn of_bundle(bundle: &Path) -> Result<Backend> {
        let path = bundle.join("config.json");
        let Ok(text) = std::fs::read(&path) else {
            // Let the namespaces backend report the missing config.
            return Ok(Backend::Namespaces);
        };
        let needle = ISOLATION_ANNOTATION.as_bytes();
        if !text.windows(needle.len()).any(|w| w == needle) {
            return Ok(Backend::Namespaces);
        }
        let b = moat_container::spec::load_bundle(bundle)?;
        let want = b
            .spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(ISOLATION_ANNOTATION).cloned());
        match want.as_deref() {
            Some("vm") => Ok(Backend::Vm),
            None | Some("namespaces") | Some("runc") => Ok(Backend::Namespaces),
            Some(other) => bail!("{ISOLATION_ANNOTATION}={other:?}: expected vm or namespaces"),
        }
    }

    /// The backend of an existing container: one stat of its state dir.
    pub fn of_container(store: &Store, id: &str) -> Backend {
        if store.dir(id).join(STATE_FILE).exists() {
            Backend::Vm
        } else {
            Backend::Namespaces
        }
    }
}

/// What later commands need to find the VM again (`<state dir>/vm.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct VmState {
    id: String,
    bundle: PathBuf,
    created: String,
    /// "creating", "created" or "running"; "stopped" is derived from QEMU being gone.
    status: String,
    qemu_pid: i32,
    qemu_start_time: u64,
    agent_socket: PathBuf,
    run_dir: PathBuf,
    image: PathBuf,
    cgroups_path: Option<String>,
    systemd_cgroup: bool,
    annotations: std::collections::BTreeMap<String, String>,
}

fn state_path(store: &Store, id: &str) -> PathBuf {
    store.dir(id).join(STATE_FILE)
}

fn save(store: &Store, st: &VmState) -> Result<()> {
    let path = state_path(store, &st.id);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(st)?)
        .with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("rename {}", path.display()))
}

fn load(store: &Store, id: &str) -> Result<VmState> {
    let path = state_path(store, id);
    let text = std::fs::read(&path).with_context(|| format!("container {id} does not exist"))?;
    serde_json::from_slice(&text).with_context(|| format!("parse {}", path.display()))
}

impl VmState {
    /// QEMU is the same live process that `create` started.
    fn alive(&self) -> bool {
        self.qemu_pid > 0
            && moat_sys::process::start_time(self.qemu_pid) == Some(self.qemu_start_time)
    }

    fn status(&self) -> &str {
        if self.alive() {
            &self.status
        } else {
            "stopped"
        }
    }

    fn attach(&self) -> Result<AgentClient> {
        AgentClient::reattach(&self.agent_socket, ATTACH_TIMEOUT)
            .with_context(|| format!("attach to the agent of container {}", self.id))
    }

    fn cgroup(&self) -> Option<moat_cgroups::Cgroup> {
        moat_cgroups::Cgroup::resolve(self.cgroups_path.as_deref(), &self.id, self.systemd_cgroup)
            .ok()
    }
}

/// Guest RAM (MiB) and vCPUs for a spec: the container's limits plus [`MEMORY_OVERHEAD_MIB`].
pub fn vm_size(spec: &oci_spec::runtime::Spec) -> (u32, u32) {
    let res = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    let mem = res
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .filter(|l| *l > 0)
        .map(|l| (l as u64).div_ceil(1 << 20))
        .unwrap_or(DEFAULT_MEMORY_MIB);
    let cpu = res.and_then(|r| r.cpu().as_ref());
    let from_quota = cpu.and_then(|c| match (c.quota(), c.period()) {
        (Some(q), Some(p)) if q > 0 && p > 0 => Some((q as u64).div_ceil(p)),
        _ => None,
    });
    let from_set = cpu.and_then(|c| c.cpus().as_deref()).map(count_cpus);
    let host = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let vcpus = from_quota.or(from_set).unwrap_or(1).clamp(1, host);
    let mem = (mem + MEMORY_OVERHEAD_MIB).min(u32::MAX as u64) as u32;
    (mem, vcpus as u32)
}

/// The number of CPUs in a cpuset list such as `0-2,5`.
fn count_cpus(list: &str) -> u64 {
    list.split(',')
        .filter_map(|r| match r.trim().split_once('-') {
            Some((a, b)) => Some(b.parse::<u64>().ok()? + 1 - a.parse::<u64>().ok()?),
            None => r.trim().parse::<u64>().ok().map(|_| 1),
        })
        .sum()
}

/// The static guest agent: `$MOAT_AGENT_BIN`, or the installed one.
fn agent_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("MOAT_AGENT_BIN") {
        return Ok(p.into());
    }
    for p in ["/usr/local/lib/moat/moat-agent", "/usr/lib/moat/moat-agent"] {
        if Path::new(p).is_file() {
            return Ok(p.into());
        }
    }
    bail!(
        "no guest agent: set MOAT_AGENT_BIN to a static moat-agent \
         (RUSTFLAGS=-Ctarget-feature=+crt-static cargo build -p moat-agent --release \
         --target x86_64-unknown-linux-gnu) or install it as /usr/local/lib/moat/moat-agent"
    )
}

/// `create`: boot the VM, create the container in the guest, detach. Returns QEMU's pid.
pub fn create(store: &Store, opts: &moat_container::CreateOptions) -> Result<i32> {
    validate_id(&opts.id)?;
    let bundle = moat_container::spec::load_bundle(&opts.bundle)?;
    let terminal = bundle
        .spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    if terminal || opts.console_socket.is_some() || opts.preserve_fds > 0 {
        bail!("a VM container has no terminal or passed descriptors yet (process.terminal, --console-socket, --preserve-fds)");
    }
    let config_json = std::fs::read_to_string(bundle.dir.join("config.json"))?;
    std::fs::create_dir_all(&store.root)?;
    let dir = store.dir(&opts.id);
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            bail!("container {} already exists", opts.id)
        }
        Err(e) => return Err(e).with_context(|| format!("create {}", dir.display())),
    }
    let mut st = VmState {
        id: opts.id.clone(),
        bundle: bundle.dir.clone(),
        created: now_rfc3339(),
        status: "creating".into(),
        qemu_pid: 0,
        qemu_start_time: 0,
        agent_socket: PathBuf::new(),
        run_dir: PathBuf::new(),
        image: dir.join("rootfs.ext4"),
        cgroups_path: bundle
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().as_ref())
            .map(|p| p.to_string_lossy().into_owned()),
        systemd_cgroup: opts.systemd_cgroup,
        annotations: bundle
            .spec
            .annotations()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
    };
    // From here on a failure removes everything (`destroy` works from the state file).
    let r = save(store, &st).and_then(|()| boot_and_create(store, &bundle, &config_json, &mut st));
    if let Err(e) = r {
        let _ = destroy(store, &st);
        return Err(e);
    }
    if let Some(p) = &opts.pid_file {
        std::fs::write(p, st.qemu_pid.to_string())
            .with_context(|| format!("write pid file {}", p.display()))?;
    }
    Ok(st.qemu_pid)
}

fn boot_and_create(
    store: &Store,
    bundle: &moat_container::spec::Bundle,
    config_json: &str,
    st: &mut VmState,
) -> Result<()> {
    let readonly = bundle
        .spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false);
    moat_vm::assets::build_ext4_image(&bundle.rootfs, &st.image)?;
    let cache = moat_vm::assets::cache_dir();
    let kernel = moat_vm::assets::ensure_kernel(&cache)?;
    let initramfs = moat_vm::assets::ensure_initramfs(&cache, &kernel, &agent_binary()?)?;
    let qemu_bin = moat_vm::qemu::Qemu::new(moat_vm::accel::Accel::Tcg).binary;
    let accel = moat_vm::accel::choose(&qemu_bin, &kernel, &cache);
    let mut cfg = VmConfig::new(kernel.vmlinuz, initramfs);
    cfg.cmdline.push(' ');
    cfg.cmdline.push_str(moat_agent_proto::SINGLE_SANDBOX_FLAG);
    (cfg.memory_mib, cfg.vcpus) = vm_size(&bundle.spec);
    // The agent socket lives in the run dir: a unix socket path must fit in 108 bytes, so a long
    // state dir (long ids or roots) falls back to a short private parent.
    cfg.run_parent = store.dir(&st.id);
    if cfg.run_parent.as_os_str().len() > 60 {
        cfg.run_parent = PathBuf::from("/run/moat-vm");
        std::fs::create_dir_all(&cfg.run_parent)
            .with_context(|| format!("create {}", cfg.run_parent.display()))?;
    }
    cfg.disks.push(Disk {
        path: st.image.clone(),
        serial: ROOTFS_SERIAL.into(),
        readonly,
    });
    let mut vm = moat_vm::qemu::Qemu::new(accel).boot(&cfg)?;
    use moat_vm::VmInstance;
    st.qemu_pid = vm.pid() as i32;
    st.qemu_start_time =
        moat_sys::process::start_time(st.qemu_pid).context("qemu exited right after booting")?;
    st.run_dir = vm.run_dir().to_path_buf();
    st.agent_socket = st.run_dir.join("agent.sock");
    save(store, st)?;
    let cg = st.cgroup().context("resolve the cgroup")?;
    cg.create()?;
    cg.add_pid(st.qemu_pid)?;
    vm.agent()?
        .create(
            &st.id,
            config_json,
            RootfsDisk {
                serial: ROOTFS_SERIAL.into(),
                fstype: "ext4".into(),
                readonly,
            },
        )
        .with_context(|| format!("create container {} in the guest", st.id))?;
    st.status = "created".into();
    save(store, st)?;
    vm.detach();
    Ok(())
}

/// `start`: reattach and start the container's process; returns the open connection.
pub fn start(store: &Store, id: &str) -> Result<AgentClient> {
    let mut st = load(store, id)?;
    if st.status() != "created" {
        bail!("container {id} is {}, not created", st.status());
    }
    let mut agent = st.attach()?;
    agent.start(id)?;
    st.status = "running".into();
    save(store, &st)?;
    Ok(agent)
}

/// `state`: the OCI state; stopped once QEMU is gone.
pub fn state(store: &Store, id: &str) -> Result<serde_json::Value> {
    let st = load(store, id)?;
    let status = st.status();
    Ok(serde_json::json!({
        "ociVersion": OCI_VERSION,
        "id": st.id,
        "pid": if status == "stopped" { 0 } else { st.qemu_pid },
        "status": status,
        "bundle": st.bundle,
        "rootfs": st.bundle.join("rootfs"),
        "created": st.created,
        "annotations": st.annotations,
        "owner": "",
    }))
}

/// `kill`: forward the signal through the agent.
pub fn kill(store: &Store, id: &str, signal: i32, all: bool) -> Result<()> {
    let st = load(store, id)?;
    if st.status() == "stopped" {
        bail!("container {id} is not running");
    }
    st.attach()?.kill(id, None, signal, all)?;
    Ok(())
}

/// `delete`: end the VM (ask the agent, then SIGKILL through a pidfd) and remove the cgroup, the
/// image, the socket and the state dir.
pub fn delete(store: &Store, id: &str, force: bool) -> Result<()> {
    let st = load(store, id)?;
    let status = st.status();
    if !force && status != "stopped" && status != "created" {
        bail!("container {id} is {status}; stop it first or use --force");
    }
    destroy(store, &st)
}

fn destroy(store: &Store, st: &VmState) -> Result<()> {
    if st.alive() {
        // Ask politely (the agent deletes its containers and powers off), briefly.
        if let Ok(mut a) = AgentClient::reattach(&st.agent_socket, Duration::from_millis(500)) {
            let _ = a.shutdown();
        }
        if !wait_gone(st, Duration::from_millis(1000)) {
            let pid = nix::unistd::Pid::from_raw(st.qemu_pid);
            if let Ok(fd) = moat_sys::process::pidfd_open(pid) {
                // The pidfd pins the process: re-check that it is still ours before signalling.
                if st.alive() {
                    let _ = moat_sys::process::pidfd_send_signal(&fd, libc::SIGKILL);
                }
            }
            if !wait_gone(st, Duration::from_secs(5)) {
                bail!("qemu {} of container {} did not exit", st.qemu_pid, st.id);
            }
        }
    }
    if let Some(cg) = st.cgroup() {
        if cg.dirs().iter().any(|d| d.exists()) {
            cg.destroy()
                .with_context(|| format!("remove the cgroup of container {}", st.id))?;
        }
    }
    let dir = store.dir(&st.id);
    std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))
}

fn wait_gone(st: &VmState, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while st.alive() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// `run`: create, start, forward the container's output until it exits, delete (unless
/// `keep`), and return its status (128+N when killed by signal N).
pub fn run(
    store: &Store,
    opts: &moat_container::CreateOptions,
    detach: bool,
    keep: bool,
) -> Result<ExitCode> {
    let code = run_code(store, opts, detach, keep)?;
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

/// [`run`] returning the container's status as a number (0 when detached).
pub fn run_code(
    store: &Store,
    opts: &moat_container::CreateOptions,
    detach: bool,
    keep: bool,
) -> Result<i32> {
    create(store, opts).with_context(|| format!("create container {}", opts.id))?;
    let mut agent = match start(store, &opts.id) {
        Ok(a) => a,
        Err(e) => {
            let _ = delete(store, &opts.id, true);
            return Err(e).with_context(|| format!("start container {}", opts.id));
        }
    };
    if detach {
        return Ok(0);
    }
    let status = follow(&mut agent, &opts.id);
    drop(agent);
    // The guest powers off by itself once the init has exited.
    if let Ok(st) = load(store, &opts.id) {
        wait_gone(&st, Duration::from_secs(3));
    }
    if !keep {
        delete(store, &opts.id, true).with_context(|| format!("delete container {}", opts.id))?;
    }
    Ok(status?.as_shell_code())
}

/// Copy the init's output to our stdout/stderr until it exits, forwarding the signals `run`
/// forwards to a namespaces container ([`crate::FORWARDED`]) through the agent.
fn follow(agent: &mut AgentClient, id: &str) -> Result<ExitStatus> {
    use nix::sys::signal::SigSet;
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    use std::io::Write;
    let mut set = SigSet::empty();
    for s in crate::FORWARDED {
        set.add(*s);
    }
    set.thread_block().context("block signals")?;
    let sfd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .context("signalfd")?;
    loop {
        while let Ok(Some(si)) = sfd.read_signal() {
            // The container may be exiting: a refused kill is not an error of `run`.
            let _ = agent.kill(id, None, si.ssi_signo as i32, false);
        }
        let Some(m) = agent.next_event(Duration::from_millis(50))? else {
            continue;
        };
        match m {
            GuestMessage::Output {
                container_id,
                exec_id: None,
                stream,
                data,
            } if container_id == id => {
                let _ = match stream {
                    Stream::Stdout => std::io::stdout().write_all(&data),
                    Stream::Stderr => std::io::stderr().write_all(&data),
                };
            }
            GuestMessage::Exited {
                container_id,
                exec_id: None,
                status,
            } if container_id == id => {
                let _ = std::io::stdout().flush();
                return Ok(status);
            }
            _ => {}
        }
    }
}
