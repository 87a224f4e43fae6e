//! VM mode: one lightweight VM per pod, every container of the pod inside it.
//!
//! Selected when the sandbox's spec carries `io.moat.isolation=vm` (a pod annotation containerd's
//! CRI passes through `pod_annotations`), or when the shim runs as `containerd-shim-moat-vm-v2`
//! (runtime type `io.containerd.moat-vm.v2`, a second name of the same binary). At the first
//! Create (the sandbox's) the shim boots the VM (`moat-vm`: QEMU microvm, the guest agent as PID
//! 1, a virtiofs share with nothing in it yet) sized from the sandbox (see [`guest::vm_size`]).
//!
//! The pause container is **emulated**: it gets no process; its task reports QEMU's pid and runs
//! until it is killed. What a pause process holds on the host (the pod's network, IPC and UTS
//! namespaces) is the VM itself here, so the containers drop the namespace paths that point at
//! it and share the guest's; running it in the guest would cost a container creation (~0.4 s
//! under TCG) and its image's rootfs in the share for nothing. The sandbox's `hostname` and
//! `linux.sysctl` are set on those guest namespaces at its Create (the agent's `Pod` request).
//!
//! Each other container: containerd has mounted its rootfs at `<bundle>/rootfs`; the shim clones
//! that mount and every bind-mount source into the running VM's share
//! ([`moat_vm::virtiofs::add_binds`], read-only ones read-only on the host) and asks the agent to
//! create it from there (`CreateShared`). Its stdio goes through containerd's fifos: the agent's
//! output events are written to stdout/stderr, stdin is forwarded in paced chunks. A process with
//! a terminal (`process.terminal`, an Exec with `terminal`: `ctr run -t`, `kubectl exec -it`) gets
//! a pty in the guest (the agent opens it in the container): its bytes go to the stdout fifo, the
//! stdin fifo's bytes into it, and ResizePty becomes the agent's `Resize`. The Task verbs map
//! onto agent requests ([`task`]); exits come from the agent's `Exited` events.
//!
//! Networking (Kata's model, `moat_vm::net`): the VM joins the pod's network namespace that
//! containerd prepared (CNI has run by the sandbox's Create): a tap per interface joined to it by
//! tc redirects, QEMU inside, the guest given the interface's MAC, addresses, routes and MTU; the
//! pod's containers share the guest's network, so they have the pod IP. A host-network pod gets
//! a VM with loopback only (a VM cannot share the host's network stack). The taps and qdiscs go
//! at power-off, or with the namespace when the shim was killed.
//!
//! What it must never do: leave a QEMU, virtiofsd, run directory or mount behind once the
//! sandbox is deleted or the shim shuts down, or touch the namespaces backend's containers.

mod error;
mod forward;
pub mod guest;
mod link;
mod stdio;
mod task;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use containerd_shim::protos::events::task::{TaskExit, TaskOOM};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::topics;

pub use error::{Result, VmPodError};
use link::{Event, Link};

/// The name containerd runs the shim under for VM pods (`io.containerd.moat-vm.v2`).
pub const VM_SHIM_NAME: &str = "containerd-shim-moat-vm-v2";
/// Set by `start` for the serving shim when it was run as [`VM_SHIM_NAME`] (the serving shim
/// runs from a sealed copy of the binary, whose name says nothing).
pub const VM_MODE_ENV: &str = "MOAT_SHIM_ISOLATION";

/// Where pod VMs have their run directories (`moat-vm-<shim pid>-<n>`: agent and virtiofsd
/// sockets, console log, the shared directory's mount point).
pub const RUN_PARENT: &str = "/run/moat-shim-vm";

/// Remove the run directories of pod VMs whose shim is gone. A shim that is killed cannot power
/// its VM off, but the agent does so itself when the shim's connection closes (QEMU and then
/// virtiofsd exit); the directory is what stays. Run by `delete` (containerd's clean-up after a
/// shim died) and before every boot.
pub fn collect_stale_run_dirs() {
    let Ok(rd) = std::fs::read_dir(RUN_PARENT) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("moat-vm-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let shim_alive = std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.windows(20).any(|w| w == b"containerd-shim-moat"));
        if !shim_alive {
            log::info!(
                "remove the run directory {} of a gone shim",
                e.path().display()
            );
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Host pids the shim's reaper must leave alone: QEMU and virtiofsd, waited for by `moat-vm`.
static OWNED_PIDS: Mutex<Option<HashSet<i32>>> = Mutex::new(None);

/// Whether `pid` is a child that `moat-vm` waits for itself.
pub fn owned_pid(pid: i32) -> bool {
    OWNED_PIDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .is_some_and(|s| s.contains(&pid))
}

/// Held while `moat-vm` runs `ip`/`tc` for the pod's network attachment: the reaper must leave
/// those children to the `Command` that waits for them.
static NET_COMMANDS: Mutex<()> = Mutex::new(());

/// Whether the network attachment's commands are running (the reaper waits meanwhile).
pub fn running_net_commands() -> bool {
    NET_COMMANDS.try_lock().is_err()
}

/// Attach to or detach from the pod's network namespace with the reaper held off.
fn with_net_commands<T>(f: impl FnOnce() -> T) -> T {
    let _g = NET_COMMANDS.lock().unwrap_or_else(|e| e.into_inner());
    f()
}

fn own_pid(pid: u32) {
    OWNED_PIDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashSet::new)
        .insert(pid as i32);
}

/// Whether the shim was started as [`VM_SHIM_NAME`].
pub fn forced() -> bool {
    std::env::var(VM_MODE_ENV).is_ok_and(|v| v == "vm")
}

/// One process of the pod: a container's init or an exec'd process.
#[derive(Default)]
struct VProc {
    /// Guest pid (0 until created; the emulated sandbox has none).
    guest_pid: i32,
    started: bool,
    exit: Option<(u32, Timestamp)>,
    stdin: String,
    stdout: String,
    stderr: String,
    /// Where the agent's output events go until the process exits.
    out: Option<File>,
    err: Option<File>,
    /// For an exec: its process spec (JSON), run at Start.
    spec: Option<String>,
}

struct VCtr {
    bundle: String,
    /// The emulated pause container.
    sandbox: bool,
    init: VProc,
    execs: HashMap<String, VProc>,
    rootfs_mounted: bool,
    /// What this container added to the VM's share (relative targets).
    shared: Vec<PathBuf>,
    paused: bool,
}

#[derive(Default)]
struct Table {
    ctrs: HashMap<String, VCtr>,
}

/// The pod's VM and its containers.
pub struct VmPod {
    table: Mutex<Table>,
    cond: Condvar,
    link: OnceLock<Arc<Link>>,
    /// Serializes the boot (the first Create).
    booting: Mutex<()>,
    /// The VM's attachment to the pod's network namespace, removed at power-off.
    net: Mutex<Option<moat_vm::net::Attachment>>,
    /// Reconnects after a containerd restart, as the namespaces service's do.
    events: crate::events::Events,
    /// Port forwarding into the VM, for a pod with a network namespace of its own.
    forward: Mutex<Option<Arc<forward::Forwarder>>>,
}

fn now() -> Timestamp {
    containerd_shim::util::timestamp().unwrap_or_default()
}

impl VmPod {
    /// `address`: containerd's ttrpc address, for the pod's events.
    pub fn new(address: Option<String>, namespace: &str) -> Arc<VmPod> {
        Arc::new(VmPod {
            table: Mutex::default(),
            cond: Condvar::new(),
            link: OnceLock::new(),
            booting: Mutex::new(()),
            net: Mutex::new(None),
            events: crate::events::Events::new(address, namespace),
            forward: Mutex::new(None),
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether container `id` belongs to this pod.
    pub fn has(&self, id: &str) -> bool {
        self.table().ctrs.contains_key(id)
    }

    pub fn is_empty(&self) -> bool {
        self.table().ctrs.is_empty()
    }

    fn publish(&self, topic: &str, ev: Box<dyn MessageDyn>) {
        self.events.publish(topic, ev);
    }

    fn link(&self) -> Result<&Arc<Link>> {
        self.link
            .get()
            .ok_or_else(|| VmPodError::NotFound("the pod VM".into()))
    }

    /// Boot the pod's VM (once), sized from `spec`.
    fn boot(self: &Arc<Self>, id: &str, spec: &serde_json::Value) -> Result<&Arc<Link>> {
        let _g = self.booting.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = self.link.get() {
            return Ok(l);
        }
        let started = std::time::Instant::now();
        let cache = moat_vm::assets::cache_dir();
        let kernel = moat_vm::assets::ensure_kernel(&cache)
            .map_err(VmPodError::vm("fetch the guest kernel"))?;
        let agent = moat_vm::agent::find_agent().map_err(VmPodError::vm("find the guest agent"))?;
        let initramfs = moat_vm::assets::ensure_initramfs(&cache, &kernel, &agent)
            .map_err(VmPodError::vm("build the guest initramfs"))?;
        let qemu_bin = moat_vm::qemu::Qemu::new(moat_vm::accel::Accel::Tcg).binary;
        let accel = moat_vm::accel::choose(&qemu_bin, &kernel, &cache);
        let mut cfg = moat_vm::VmConfig::new(kernel.vmlinuz, initramfs);
        (cfg.memory_mib, cfg.vcpus) = guest::vm_size(spec);
        cfg.agent_ports = 1;
        cfg.shared = Some(moat_vm::SharedDir::default());
        // A clone of a template where one can be made (its share is then FUSE over a port),
        // unless the pod asks for a cold boot with virtiofs (`io.moat.vm.template: "false"`).
        cfg.template = moat_vm::template::wanted(
            spec.get("annotations")
                .and_then(|a| a.get(moat_vm::template::ANNOTATION))
                .and_then(|v| v.as_str()),
        );
        collect_stale_run_dirs();
        cfg.run_parent = PathBuf::from(RUN_PARENT);
        std::fs::create_dir_all(&cfg.run_parent)
            .map_err(VmPodError::io("create", &cfg.run_parent))?;
        let netns = guest::netns_path(spec).map_err(VmPodError::Unsupported)?;
        let attachment = match &netns {
            Some(ns) => Some(with_net_commands(|| moat_vm::net::attach(ns)).map_err(
                VmPodError::vm(format!(
                    "attach the VM of pod {id} to its network namespace {}",
                    ns.display()
                )),
            )?),
            None => None,
        };
        if let Some(a) = &attachment {
            cfg.netns = Some(a.netns.clone());
            cfg.nics = a.nics();
        }
        let detach = |a: &Option<moat_vm::net::Attachment>| {
            if let Some(a) = a {
                if let Err(e) = with_net_commands(|| moat_vm::net::detach(&a.netns, &a.links)) {
                    log::warn!("pod {id}: {e}");
                }
            }
        };
        use moat_vm::{Hypervisor, VmInstance};
        let mut vm = match moat_vm::qemu::Qemu::new(accel).boot(&cfg) {
            Ok(vm) => vm,
            Err(e) => {
                detach(&attachment);
                return Err(VmPodError::vm(format!("boot the VM of pod {id}"))(e));
            }
        };
        let (interfaces, routes) = attachment
            .as_ref()
            .map(|a| (a.interfaces.clone(), a.routes.clone()))
            .unwrap_or_default();
        let configured = vm
            .agent()
            .and_then(|a| a.configure_network(interfaces, routes));
        if let Err(e) = configured {
            let _ = vm.kill();
            detach(&attachment);
            return Err(VmPodError::vm(format!(
                "configure the network of pod {id} in the guest"
            ))(e));
        }
        *self.net.lock().unwrap_or_else(|e| e.into_inner()) = attachment;
        own_pid(vm.pid());
        if let Some(p) = vm.virtiofsd_pid() {
            own_pid(p);
        }
        let me = Arc::downgrade(self);
        // On failure the VM is dropped, which kills QEMU and its share server.
        let link = Link::start(vm, move |ev| {
            if let Some(pod) = me.upgrade() {
                pod.on_event(ev);
            }
        })
        .map_err(VmPodError::vm(format!(
            "take the agent connection of pod {id}"
        )))?;
        log::info!(
            "pod {id}: VM booted in {:?} (qemu {}, {} MiB, {} vCPU, guest kernel {})",
            started.elapsed(),
            link.pid(),
            cfg.memory_mib,
            cfg.vcpus,
            link.kernel_release()
        );
        // The pod's cold pages go back to the host while it idles (moat_vm::reclaim).
        moat_vm::reclaim::spawn(link.pid());
        if let Some(ns) = &netns {
            match forward::Forwarder::start(ns, link.clone()) {
                Ok(f) => *self.forward.lock().unwrap_or_else(|e| e.into_inner()) = Some(f),
                // The pod works without it; a port-forward to it fails.
                Err(e) => log::warn!("pod {id}: no port forwarding: {e}"),
            }
        }
        let _ = self.link.set(link);
        self.link()
    }

    fn forwarder(&self) -> Option<Arc<forward::Forwarder>> {
        self.forward
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn on_event(&self, ev: Event) {
        use std::io::Write;
        match ev {
            Event::Output {
                container_id,
                exec_id: Some(stream),
                data,
                ..
            } if container_id == moat_agent_proto::FORWARD_ID => {
                if let Some(f) = self.forwarder() {
                    f.output(&stream, &data);
                }
            }
            Event::Exited {
                container_id,
                exec_id: Some(stream),
                ..
            } if container_id == moat_agent_proto::FORWARD_ID => {
                if let Some(f) = self.forwarder() {
                    f.closed(&stream);
                }
            }
            Event::Output {
                container_id,
                exec_id,
                stream,
                data,
            } => {
                // Write outside the table's lock: a slow reader of the fifo must not stall it.
                let file = {
                    let mut t = self.table();
                    let p = t.ctrs.get_mut(&container_id).and_then(|c| match &exec_id {
                        None => Some(&mut c.init),
                        Some(e) => c.execs.get_mut(e),
                    });
                    p.and_then(|p| match stream {
                        moat_agent_proto::Stream::Stdout => p.out.as_ref(),
                        moat_agent_proto::Stream::Stderr => p.err.as_ref(),
                    })
                    .and_then(|f| f.try_clone().ok())
                };
                if let Some(mut f) = file {
                    let _ = f.write_all(&data);
                }
            }
            Event::Exited {
                container_id,
                exec_id,
                status,
            } => self.exited(&container_id, exec_id.as_deref(), status.as_shell_code()),
            Event::Oom { container_id } => {
                // As the namespaces path (`service.rs`, `oom_watch`): for a container of ours.
                if self.table().ctrs.contains_key(&container_id) {
                    self.publish(
                        topics::TASK_OOM_EVENT_TOPIC,
                        Box::new(TaskOOM {
                            container_id,
                            ..Default::default()
                        }),
                    );
                }
            }
            Event::Gone => {
                // The VM is gone: every process still running has ended with it, and so has the
                // pod (the emulated sandbox too).
                let mut gone = Vec::new();
                for (cid, c) in self.table().ctrs.iter() {
                    if c.init.exit.is_none() {
                        gone.push((cid.clone(), None));
                    }
                    for (eid, e) in c.execs.iter() {
                        if e.exit.is_none() {
                            gone.push((cid.clone(), Some(eid.clone())));
                        }
                    }
                }
                for (cid, eid) in gone {
                    self.exited(&cid, eid.as_deref(), 255);
                }
            }
        }
    }

    /// Record an exit, close the process's output (containerd's copy sees EOF), tell containerd.
    fn exited(&self, cid: &str, eid: Option<&str>, code: i32) {
        let pid = {
            let mut t = self.table();
            let Some(c) = t.ctrs.get_mut(cid) else { return };
            let p = match eid {
                None => &mut c.init,
                Some(e) => match c.execs.get_mut(e) {
                    Some(p) => p,
                    None => return,
                },
            };
            if p.exit.is_some() {
                return;
            }
            p.exit = Some((code as u32, now()));
            p.out = None;
            p.err = None;
            p.guest_pid
        };
        self.cond.notify_all();
        self.publish(
            topics::TASK_EXIT_EVENT_TOPIC,
            Box::new(TaskExit {
                container_id: cid.to_string(),
                id: eid.unwrap_or(cid).to_string(),
                pid: self.host_pid(pid),
                exit_status: code as u32,
                exited_at: Some(now()).into(),
                ..Default::default()
            }),
        );
    }

    /// The pid containerd is given for a process: QEMU's (the guest pids mean nothing on the
    /// host, and a host pid that is not the process would be worse).
    fn host_pid(&self, _guest_pid: i32) -> u32 {
        self.link.get().map_or(0, |l| l.pid())
    }

    /// Power the VM off and free everything (Shutdown, or the sandbox's Delete).
    pub fn power_off(&self) {
        if let Some(f) = self
            .forward
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            f.stop();
        }
        if let Some(l) = self.link.get() {
            l.power_off(std::time::Duration::from_secs(5));
        }
        // QEMU is gone: its taps and the redirects on the pod's interfaces go too.
        if let Some(a) = self.net.lock().unwrap_or_else(|e| e.into_inner()).take() {
            if let Err(e) = with_net_commands(|| moat_vm::net::detach(&a.netns, &a.links)) {
                log::warn!("remove the pod VM's network attachment: {e}");
            }
        }
    }
}
