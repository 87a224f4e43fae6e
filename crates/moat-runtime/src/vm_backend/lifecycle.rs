//! The lifecycle verbs of a VM container: `create` (boot the VM, share the bind mounts, create
//! the container in the guest, detach), `start`, `state`, `kill`, `pause`, `resume`, `delete`,
//! and `run`, which chains them and follows the init in the foreground.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use moat_agent_proto::{InlineFile, RootfsDisk, SharedRootfs};
use moat_container::state::{now_rfc3339, validate_id, OciState, Status, OCI_VERSION};
use moat_container::Store;
use moat_vm::{AgentClient, Hypervisor, SharedBind, VmConfig, VmInstance};

use super::error::{Result, VmBackendError};
use super::follow::Local;
use super::mounts::{self, SharePlan};
use super::network::{self, NetPlan, NetRecord};
use super::state::{HostProc, VmState};
use super::terminal;
use super::{ACCEL_ANNOTATION, DEFAULT_MEMORY_MIB, MEMORY_OVERHEAD_MIB};

/// Agent ports per VM: how many commands can be attached at once (a foreground `run` or `exec`
/// holds one for as long as it runs).
const AGENT_PORTS: u32 = 4;

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

/// Where the container's root filesystem comes from in the guest.
enum GuestRoot {
    /// The image disk under an overlay (a clone of a template); the binds sent as files.
    Image(Vec<InlineFile>),
    /// The bundle's rootfs in the VM's shared directory.
    Shared,
}

/// `create`: boot the VM, create the container in the guest, detach. Returns QEMU's pid.
/// With `process.terminal`, the pty master goes to `--console-socket` and a detached relay
/// carries the terminal (`terminal`).
pub fn create(store: &Store, opts: &moat_container::CreateOptions) -> Result<i32> {
    let (pid, process, _) = create_inner(store, opts, false, false)?;
    if let Some(process) = process.filter(|p| p.terminal().unwrap_or(false)) {
        let relay = match &opts.console_socket {
            Some(sock) => terminal::spawn_relay(
                store,
                &opts.id,
                terminal::RelayJob::Init,
                sock,
                terminal::console_size(&process),
            ),
            None => Err(no_console_socket()),
        };
        if let Err(e) = relay {
            let _ = delete(store, &opts.id, true);
            return Err(e);
        }
    }
    Ok(pid)
}

/// runc's refusal of a terminal nobody would read: detached without a console socket.
pub(super) fn no_console_socket() -> VmBackendError {
    VmBackendError::Invalid(
        "cannot allocate tty if moat-runtime will detach without setting console socket".into(),
    )
}

/// [`create`] without the terminal's relay, with a stdin pipe for the init when `stdin` (for
/// `run`, which feeds it); a terminal without a console socket is refused unless `foreground`.
/// Returns QEMU's pid and the bundle's process.
fn create_inner(
    store: &Store,
    opts: &moat_container::CreateOptions,
    stdin: bool,
    foreground: bool,
) -> Result<(i32, Option<oci_spec::runtime::Process>, Option<AgentClient>)> {
    validate_id(&opts.id)?;
    let bundle = moat_container::spec::load_bundle(&opts.bundle)?;
    let terminal = bundle
        .spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    if opts.preserve_fds > 0 {
        return Err(VmBackendError::Unsupported(
            "a VM container cannot be passed descriptors (--preserve-fds): no host fd reaches \
             the guest"
                .into(),
        ));
    }
    if terminal && !foreground && opts.console_socket.is_none() {
        return Err(no_console_socket());
    }
    // Everything the bundle can get wrong is checked before anything exists.
    let share = mounts::plan(&bundle.spec, &bundle.dir, &opts.id)?;
    let net = network::plan(&bundle.spec)?;
    let cfg_path = bundle.dir.join("config.json");
    let config_json =
        std::fs::read_to_string(&cfg_path).map_err(VmBackendError::io("read", &cfg_path))?;
    std::fs::create_dir_all(&store.root).map_err(VmBackendError::io("create", &store.root))?;
    let dir = store.dir(&opts.id);
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(VmBackendError::Exists(opts.id.clone()))
        }
        Err(e) => return Err(VmBackendError::io("create", &dir)(e)),
    }
    let mut st = VmState {
        id: opts.id.clone(),
        bundle: bundle.dir.clone(),
        created: now_rfc3339(),
        status: Status::Creating,
        qemu_pid: 0,
        qemu_start_time: 0,
        virtiofsd: None,
        agent_socket: PathBuf::new(),
        agent_ports: AGENT_PORTS,
        run_dir: PathBuf::new(),
        net: None,
        image: dir.join("rootfs.ext4"),
        cgroups_path: bundle
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().as_ref())
            .map(|p| p.to_string_lossy().into_owned()),
        systemd_cgroup: opts.systemd_cgroup,
        disposable: false,
        annotations: bundle
            .spec
            .annotations()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
    };
    // From here on a failure removes everything (`destroy` works from the state file).
    let r = st
        .save(store)
        .and_then(|()| boot_and_create(store, &bundle, &config_json, share, net, stdin, &mut st));
    let agent = match r {
        Ok(a) => a,
        Err(e) => {
            let _ = st.destroy(store);
            return Err(e);
        }
    };
    if let Some(p) = &opts.pid_file {
        std::fs::write(p, st.qemu_pid.to_string()).map_err(VmBackendError::io("write", p))?;
    }
    // `run` goes on with the connection create used (no second attach and ping).
    let agent = foreground.then_some(agent).flatten();
    Ok((st.qemu_pid, bundle.spec.process().clone(), agent))
}

fn boot_and_create(
    store: &Store,
    bundle: &moat_container::spec::Bundle,
    config_json: &str,
    share: SharePlan,
    net: NetPlan,
    stdin: bool,
    st: &mut VmState,
) -> Result<Option<AgentClient>> {
    let readonly = bundle
        .spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false);
    let assets = VmBackendError::vm("prepare the guest");
    let cache = moat_vm::assets::cache_dir();
    let kernel = moat_vm::assets::ensure_kernel(&cache)
        .map_err(VmBackendError::vm("fetch the guest kernel"))?;
    let agent = moat_vm::agent::find_agent().map_err(VmBackendError::vm("find the guest agent"))?;
    let initramfs = moat_vm::assets::ensure_initramfs(&cache, &kernel, &agent).map_err(assets)?;
    let qemu_bin = moat_vm::qemu::Qemu::new(moat_vm::accel::Accel::Tcg).binary;
    let accel = moat_vm::accel::choose(&qemu_bin, &kernel, &cache);
    // Reported in `state` (and `list --format json`): which accelerator this VM got.
    st.annotations
        .insert(ACCEL_ANNOTATION.into(), accel.as_str().into());
    let mut cfg = VmConfig::new(kernel.vmlinuz, initramfs);
    cfg.cmdline.push(' ');
    cfg.cmdline.push_str(moat_agent_proto::SINGLE_SANDBOX_FLAG);
    (cfg.memory_mib, cfg.vcpus) = vm_size(&bundle.spec);
    cfg.agent_ports = st.agent_ports;
    // The agent and virtiofsd sockets live in the run dir: a unix socket path must fit in 108
    // bytes, so a long state dir (long ids or roots) falls back to a short private parent.
    cfg.run_parent = store.dir(&st.id);
    if cfg.run_parent.as_os_str().len() > 60 {
        cfg.run_parent = PathBuf::from("/run/moat-vm");
        std::fs::create_dir_all(&cfg.run_parent)
            .map_err(VmBackendError::io("create", &cfg.run_parent))?;
    }
    // With an image of the rootfs (and binds that are small files), the VM is a clone of a
    // template: no shared directory, the image as a read-only disk under an overlay in the
    // guest. Otherwise the root filesystem reaches the guest over virtiofs like the binds (no
    // copy: the start time and the disk used do not grow with the image; the container's
    // writes land in the bundle's rootfs, as with the namespaces backend). See
    // docs/vm-transport.md and docs/vm-templates.md.
    let image = st
        .annotations
        .get(super::ROOTFS_IMAGE_ANNOTATION)
        .map(PathBuf::from)
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() == moat_vm::template::DISK_BYTES));
    // Read the bind files only when a clone can take them.
    let inline = image.as_ref().and_then(|_| share.inline_files());
    let mut share = share;
    let rootfs_target = format!("{}/rootfs", st.id);
    let root = match (image, inline) {
        (Some(img), Some(files)) => {
            cfg.disks.push(moat_vm::Disk {
                path: img,
                serial: "rootfs0".into(),
                readonly: true,
            });
            cfg.template = true;
            // Nothing in this VM can outlive it: its only disk is read-only, the container's
            // writes are in guest memory and the small files were copies. `destroy` may SIGKILL.
            st.disposable = true;
            GuestRoot::Image(files)
        }
        _ => {
            share.dir.binds.push(SharedBind {
                source: bundle.rootfs.clone(),
                target: rootfs_target.clone().into(),
                readonly,
                recursive: true,
                propagate: false,
            });
            cfg.shared = Some(std::mem::take(&mut share.dir));
            // A clone too (its share is FUSE over a serial port, served by moat-vmfs), but its
            // writes reach the host: not disposable. `io.moat.vm.template: "false"` asks for a
            // cold boot and virtiofs (faster I/O, slower start).
            cfg.template = moat_vm::template::wanted(
                st.annotations
                    .get(moat_vm::template::ANNOTATION)
                    .map(String::as_str),
            );
            GuestRoot::Shared
        }
    };
    let attachment = match net {
        NetPlan::Fresh => None,
        NetPlan::Join(netns) => {
            let a = moat_vm::net::attach(&netns).map_err(VmBackendError::vm(format!(
                "attach the VM of container {} to the network namespace {}",
                st.id,
                netns.display()
            )))?;
            // Recorded before QEMU exists: a failure from here on removes the taps.
            st.net = Some(NetRecord::of(&a));
            st.save(store)?;
            cfg.netns = Some(netns);
            cfg.nics = a.nics();
            Some(a)
        }
    };
    let cgroup_err = |what: String| move |source| VmBackendError::Cgroup { what, source };
    let cg = st
        .cgroup()
        .ok_or_else(|| VmBackendError::Invalid(format!("cgroup of container {}", st.id)))?;
    // The host cgroup is made while QEMU starts (a failure from here on removes it, as it
    // removes QEMU: `destroy` works from the state file).
    let what = format!("boot the VM of container {}", st.id);
    let (booted, made) = std::thread::scope(|s| {
        let made = s.spawn(|| cg.create());
        let booted = moat_vm::qemu::Qemu::new(accel).boot(&cfg);
        (booted, made.join())
    });
    let mut vm = booted.map_err(VmBackendError::vm(what))?;
    made.unwrap_or_else(|p| std::panic::resume_unwind(p))
        .map_err(cgroup_err(format!("create the cgroup of {}", st.id)))?;
    st.annotations.insert(
        super::START_ANNOTATION.into(),
        if vm.template().is_some() {
            "clone"
        } else {
            "cold"
        }
        .into(),
    );
    st.qemu_pid = vm.pid() as i32;
    st.qemu_start_time = moat_sys::process::start_time(st.qemu_pid).ok_or_else(|| {
        VmBackendError::Unsupported(format!("qemu {} exited right after booting", st.qemu_pid))
    })?;
    st.run_dir = vm.run_dir().to_path_buf();
    st.agent_socket = moat_vm::qemu::agent_socket(&st.run_dir, 0);
    st.save(store)?;
    cg.add_pid(st.qemu_pid).map_err(cgroup_err(format!(
        "move qemu into the cgroup of {}",
        st.id
    )))?;
    let agent = vm
        .agent()
        .map_err(VmBackendError::vm("connect to the agent"))?;
    let (interfaces, routes) = attachment
        .map(|a| (a.interfaces, a.routes))
        .unwrap_or_default();
    // The agent brought `lo` up at boot: a VM of its own network namespace with no interface
    // to configure (`--network none`) needs no request.
    if !interfaces.is_empty() || !routes.is_empty() {
        agent
            .configure_network(interfaces, routes)
            .map_err(VmBackendError::vm(format!(
                "configure the network of container {} in the guest",
                st.id
            )))?;
    }
    let guest_config = network::guest_config(config_json)?;
    match root {
        GuestRoot::Image(files) => agent.create_with(
            &st.id,
            &guest_config,
            RootfsDisk {
                serial: "rootfs0".into(),
                fstype: "ext4".into(),
                readonly,
                overlay: !readonly,
            },
            stdin,
            vec![],
            files,
        ),
        GuestRoot::Shared => agent.create_shared(
            &st.id,
            &guest_config,
            SharedRootfs {
                path: rootfs_target,
                readonly,
            },
            stdin,
            share.mounts,
        ),
    }
    .map_err(VmBackendError::vm(format!(
        "create container {} in the guest",
        st.id
    )))?;
    st.status = Status::Created;
    let agent = vm.take_agent();
    let detached = vm.detach();
    st.virtiofsd = detached.virtiofsd_pid.and_then(|p| HostProc::of(p as i32));
    st.save(store)?;
    Ok(agent)
}

/// `start`: reattach and start the container's process; returns the open connection.
pub fn start(store: &Store, id: &str) -> Result<AgentClient> {
    let agent = start_on(store, id, None)?;
    // Nothing of moat follows this container unless it has a terminal relay: a helper gives
    // the sandbox's cold pages back while it idles.
    super::reclaimer::spawn_unless_followed(store, id);
    Ok(agent)
}

/// `start` over `agent`, a connection already open (else a new one).
fn start_on(store: &Store, id: &str, agent: Option<AgentClient>) -> Result<AgentClient> {
    let mut st = VmState::load(store, id)?;
    st.require("start", Status::Created)?;
    let mut agent = match agent {
        Some(a) => a,
        None => st.attach()?,
    };
    agent
        .start(id)
        .map_err(VmBackendError::vm(format!("start container {id}")))?;
    st.status = Status::Running;
    st.save(store)?;
    Ok(agent)
}

/// `state`: the OCI state; stopped once QEMU is gone. The pid is QEMU's.
pub fn state(store: &Store, id: &str) -> Result<OciState> {
    let st = VmState::load(store, id)?;
    let status = st.status();
    Ok(OciState {
        oci_version: OCI_VERSION.into(),
        id: st.id.clone(),
        pid: if status == Status::Stopped {
            0
        } else {
            st.qemu_pid
        },
        status,
        rootfs: st.bundle.join("rootfs"),
        bundle: st.bundle,
        created: st.created,
        annotations: st.annotations,
        owner: String::new(),
    })
}

/// The OCI states of every VM container of `store`.
pub fn list(store: &Store) -> Vec<OciState> {
    super::state::list_ids(store)
        .iter()
        .filter_map(|id| state(store, id).ok())
        .collect()
}

/// `kill`: forward the signal through the agent.
pub fn kill(store: &Store, id: &str, signal: i32, all: bool) -> Result<()> {
    let st = VmState::load(store, id)?;
    if st.status() == Status::Stopped {
        return Err(VmBackendError::BadStatus {
            id: id.into(),
            action: "kill",
            status: Status::Stopped,
        });
    }
    st.attach()?
        .kill(id, None, signal, all)
        .map_err(VmBackendError::vm(format!("kill container {id}")))
}

/// `pause`: the agent freezes the container's cgroup in the guest.
pub fn pause(store: &Store, id: &str) -> Result<()> {
    let mut st = VmState::load(store, id)?;
    st.require("pause", Status::Running)?;
    st.attach()?
        .pause(id)
        .map_err(VmBackendError::vm(format!("pause container {id}")))?;
    st.status = Status::Paused;
    st.save(store)
}

/// `resume`: the agent thaws the container's cgroup in the guest.
pub fn resume(store: &Store, id: &str) -> Result<()> {
    let mut st = VmState::load(store, id)?;
    st.require("resume", Status::Paused)?;
    st.attach()?
        .resume(id)
        .map_err(VmBackendError::vm(format!("resume container {id}")))?;
    st.status = Status::Running;
    st.save(store)
}

/// `delete`: end the VM and remove its QEMU, virtiofsd, cgroup, image, sockets and state dir.
pub fn delete(store: &Store, id: &str, force: bool) -> Result<()> {
    let st = VmState::load(store, id)?;
    let status = st.status();
    if !force && status != Status::Stopped && status != Status::Created {
        return Err(VmBackendError::BadStatus {
            id: id.into(),
            action: "delete (without --force)",
            status,
        });
    }
    st.destroy(store)
}

/// `run`: create, start, forward the container's stdin, output and signals until it exits,
/// delete (unless `keep`), and return its status (128+N when killed by signal N).
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
    if detach {
        create(store, opts)?;
        if let Err(e) = start(store, &opts.id) {
            let _ = delete(store, &opts.id, true);
            return Err(e);
        }
        return Ok(0);
    }
    run_attached(store, opts, keep, true, || {})
}

/// Create and start a VM container and stay attached to it: its output goes to our stdout and
/// stderr (and, with `stdin`, our stdin to it) until it exits; `started` is called once it runs
/// (a detached `moat run` reports success to its caller there, and its output goes to a log).
/// With `process.terminal` the guest's pty is shown on our terminal (raw mode, its size
/// followed), or on a host pty whose master goes to `opts.console_socket`.
/// Deletes the container unless `keep`; returns its status (128+N when killed by signal N).
pub fn run_attached(
    store: &Store,
    opts: &moat_container::CreateOptions,
    keep: bool,
    stdin: bool,
    started: impl FnOnce(),
) -> Result<i32> {
    let (qemu_pid, process, agent) = create_inner(store, opts, stdin, true)?;
    let mut agent = match start_on(store, &opts.id, agent) {
        Ok(a) => a,
        Err(e) => {
            let _ = delete(store, &opts.id, true);
            return Err(e);
        }
    };
    started();
    // This process follows the sandbox until it ends: it gives the sandbox's cold pages back
    // while it idles.
    moat_vm::reclaim::spawn(qemu_pid as u32);
    let status = match process.filter(|p| p.terminal().unwrap_or(false)) {
        Some(p) => terminal::follow_terminal(
            &mut agent,
            &opts.id,
            None,
            opts.console_socket.as_deref(),
            terminal::console_size(&p),
            stdin,
        ),
        None => super::follow::follow(&mut agent, &opts.id, None, Local::Stdio { stdin }),
    };
    drop(agent);
    // The guest powers off by itself once the init has exited; a disposable one is not waited
    // for.
    if let Ok(st) = VmState::load(store, &opts.id) {
        st.end_if_disposable();
        st.wait_gone(Duration::from_secs(3));
    }
    if !keep {
        delete(store, &opts.id, true)?;
    }
    Ok(status?.as_shell_code())
}
