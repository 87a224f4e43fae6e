//! The QEMU backend: a `microvm` machine with no default devices, the guest kernel and moat's
//! initramfs, one virtio-serial port for the agent (a unix socket on the host), one
//! virtio-blk disk per container root filesystem and one virtio-net device per tap of its network
//! namespace, which QEMU runs in (`net`). QEMU runs chrooted into an empty directory
//! once the VM is set up (`-chroot`/`-run-with chroot=`), with its seccomp sandbox
//! (`-sandbox on`, no spawning, no privilege changes) and `-no-reboot`, so the guest powering
//! off, rebooting or panicking ends the QEMU process.
//!
//! Each VM owns a private run directory (agent socket, console log) that is removed when the VM
//! is waited for or dropped; dropping a running VM kills QEMU.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::accel::Accel;
use crate::client::AgentClient;
use crate::error::{Result, VmError};
use crate::{Hypervisor, VmConfig, VmInstance};

/// QEMU as the hypervisor.
#[derive(Debug, Clone)]
pub struct Qemu {
    pub binary: PathBuf,
    pub accel: Accel,
}

impl Qemu {
    pub fn new(accel: Accel) -> Qemu {
        Qemu {
            binary: std::env::var_os("MOAT_QEMU")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64")),
            accel,
        }
    }

    /// The guest kernel command line. Under TCG the guest's TSC is the host's, but a loaded host
    /// makes the guest's PIT calibration fail and the boot stall without a clocksource; so the
    /// host's TSC frequency is passed in (`tsc_early_khz`) and the TSC declared reliable.
    pub fn cmdline(&self, cfg: &VmConfig) -> String {
        let mut c = cfg.cmdline.clone();
        if cfg.agent_ports > 1 {
            c.push_str(&format!(
                " {}={}",
                moat_agent_proto::AGENT_PORTS_FLAG,
                cfg.agent_ports
            ));
        }
        if self.accel == Accel::Tcg && !c.contains("tsc_early_khz=") {
            if let Some(khz) = host_tsc_khz() {
                c.push_str(&format!(" tsc_early_khz={khz} tsc=reliable"));
            }
        }
        c
    }

    /// `-accel`'s value. A clone under TCG gets a smaller translation buffer than QEMU's
    /// 1 GiB default: a sandbox's guest runs little code, and every page of the buffer it ever
    /// filled stays resident (measured: 29 MiB of an idle clone's 67 MiB of private memory).
    /// Override with `MOAT_VM_TB_MIB`.
    fn accel_arg(&self, launch: Launch<'_>) -> String {
        let tb = std::env::var("MOAT_VM_TB_MIB")
            .ok()
            .and_then(|v| v.parse::<u32>().ok());
        match (self.accel, launch, tb) {
            (Accel::Tcg, _, Some(mib)) => format!("tcg,tb-size={mib}"),
            (Accel::Tcg, Launch::Clone { .. }, None) => format!("tcg,tb-size={CLONE_TB_MIB}"),
            _ => self.accel.as_str().to_string(),
        }
    }

    /// The command line for `cfg` with its run directory `run` (a cold boot).
    pub fn command(&self, cfg: &VmConfig, run: &Path) -> Command {
        self.command_for(cfg, run, Launch::Cold)
    }

    /// The command line for `cfg` booted or resumed as `launch` says.
    pub(crate) fn command_for(&self, cfg: &VmConfig, run: &Path, launch: Launch<'_>) -> Command {
        let mut c = Command::new(&self.binary);
        let mut machine = String::from("microvm,x-option-roms=off,rtc=off,acpi=on");
        match launch {
            Launch::Cold if cfg.shared.is_some() => {
                // vhost-user devices need guest RAM the backend can map.
                machine.push_str(",memory-backend=mem");
                c.arg("-object").arg(format!(
                    "memory-backend-memfd,id=mem,size={}M,share=on",
                    cfg.memory_mib
                ));
            }
            Launch::Cold => {}
            Launch::Template { memory } | Launch::Clone { memory } => {
                // The template writes its RAM into the file; a clone maps it MAP_PRIVATE, so
                // its writes are copy-on-write and the file is shared by every clone.
                let share = matches!(launch, Launch::Template { .. });
                machine.push_str(",memory-backend=mem");
                c.arg("-object").arg(format!(
                    "memory-backend-file,id=mem,size={}M,mem-path={},share={}",
                    cfg.memory_mib,
                    memory.display(),
                    if share { "on" } else { "off" }
                ));
                c.arg("-qmp").arg(format!(
                    "unix:{},server=on,wait=off",
                    run.join(QMP_SOCKET).display()
                ));
                if !share {
                    // The state comes once QMP has set `x-ignore-shared` (QEMU 7.2 has no
                    // property for it) and named the socket (`template::clone`).
                    c.args(["-incoming", "defer"]);
                }
            }
        }
        c.args(["-M", &machine])
            .args(["-accel", &self.accel_arg(launch)]);
        if self.accel == Accel::Kvm {
            c.args(["-cpu", "host"]);
        } else {
            // ARAT (the APIC timer keeps running when idle): without it Linux needs a broadcast
            // timer for one-shot mode, microvm has none, and the guest ticks at HZ forever
            // (measured: 236 timer interrupts a second in an idle guest, 6% of a host core per
            // idle sandbox under TCG); with it the tick stops while the guest is idle.
            c.args(["-cpu", "qemu64,+arat"]);
        }
        c.args([
            "-m",
            &cfg.memory_mib.to_string(),
            "-smp",
            &cfg.vcpus.to_string(),
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-no-reboot",
            "-display",
            "none",
        ])
        .args([
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        ])
        // Once the VM is set up (every file, socket and disk above is open), QEMU confines
        // itself to an empty directory: a compromised device model finds no host files.
        .args(chroot_args(&self.binary, &run.join(JAIL_DIR)));
        // A clone's guest is booted already: without -kernel/-initrd QEMU does not keep their
        // bytes for the firmware (measured: 13.5 MiB of each clone's private memory).
        if !matches!(launch, Launch::Clone { .. }) {
            c.arg("-kernel")
                .arg(&cfg.kernel)
                .arg("-initrd")
                .arg(&cfg.initramfs)
                .args(["-append", &{
                    let mut line = self.cmdline(cfg);
                    if !matches!(launch, Launch::Cold) {
                        line.push(' ');
                        line.push_str(moat_agent_proto::TEMPLATE_FLAG);
                    }
                    line
                }]);
        }
        c.arg("-serial")
            .arg(format!("file:{}", run.join("console.log").display()))
            .args(["-device", "virtio-serial-device"]);
        // A virtio-serial port named `name` whose host end is a socket QEMU listens on.
        let mut serial_port = |id: &str, path: &Path, name: &str| {
            c.arg("-chardev").arg(format!(
                "socket,id={id},path={},server=on,wait=off",
                path.display()
            ));
            c.arg("-device")
                .arg(format!("virtserialport,chardev={id},name={name}"));
        };
        for i in 0..cfg.agent_ports.max(1) {
            serial_port(
                &format!("agent{i}"),
                &agent_socket(run, i),
                &moat_agent_proto::agent_port_name(i),
            );
        }
        if !matches!(launch, Launch::Cold) {
            // Every template has the port of a clone's shared directory (FUSE, served by
            // moat-vmfs: crate::fuse_share); QEMU listens, nothing need be connected.
            serial_port(
                "fsport",
                &run.join(crate::fuse_share::SOCKET),
                moat_agent_proto::FS_PORT_NAME,
            );
        }
        if cfg.shared.is_some() && matches!(launch, Launch::Cold) {
            // libvhost-user (virtiofsd) refuses legacy virtio, microvm's default for virtio-mmio.
            c.args(["-global", "virtio-mmio.force-legacy=false"]);
            c.arg("-chardev").arg(format!(
                "socket,id=fs0,path={}",
                run.join(crate::virtiofs::SOCKET).display()
            ));
            c.arg("-device").arg(format!(
                "vhost-user-fs-device,chardev=fs0,tag={}",
                moat_agent_proto::SHARE_TAG
            ));
        }
        for (i, n) in cfg.nics.iter().enumerate() {
            c.arg("-netdev").arg(format!(
                "tap,id=net{i},ifname={},script=no,downscript=no",
                n.tap
            ));
            c.arg("-device")
                .arg(format!("virtio-net-device,netdev=net{i},mac={}", n.mac));
        }
        for (i, d) in cfg.disks.iter().enumerate() {
            c.arg("-drive").arg(format!(
                "id=disk{i},file={},format=raw,if=none,readonly={}",
                d.path.display(),
                if d.readonly { "on" } else { "off" }
            ));
            c.arg("-device").arg(format!(
                "virtio-blk-device,drive=disk{i},serial={}",
                d.serial
            ));
        }
        c.stdin(Stdio::null()).stdout(Stdio::null());
        // Its own process group: a terminal's ^C goes to the runtime, which decides whether the
        // VM ends, and a detached VM outlives the command that booted it.
        c.process_group(0);
        c
    }
}

/// How QEMU starts a VM.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Launch<'a> {
    /// A cold boot of the guest kernel.
    Cold,
    /// A template being booted: its RAM is the shared file `memory`, QMP is on.
    Template { memory: &'a Path },
    /// A clone of a template: RAM copy-on-write from `memory`, device state from an incoming
    /// migration (`-incoming defer`), QMP on.
    Clone { memory: &'a Path },
}

/// TCG translation buffer of a clone, MiB.
const CLONE_TB_MIB: u32 = 32;

/// Where a clone's QEMU listens for the template's state, in its jail.
pub(crate) const INCOMING_SOCKET: &str = "in.sock";

/// The QMP socket of a template or a clone, in its run dir.
pub(crate) const QMP_SOCKET: &str = "qmp.sock";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The empty directory of the run dir that QEMU chroots into once the VM is set up.
pub const JAIL_DIR: &str = "jail";

/// How `qemu` spells "chroot to `dir` just before starting the VM": `-run-with chroot=DIR` in
/// QEMU 8.1 and later (`-chroot` is deprecated there and gone in 9.x), `-chroot DIR` before
/// (Debian 12's 7.2). Read from its `-help` once per process.
fn chroot_args(qemu: &Path, dir: &Path) -> Vec<std::ffi::OsString> {
    static RUN_WITH: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let run_with = *RUN_WITH.get_or_init(|| {
        // Remembered per QEMU binary (path, size, mtime) in the cache: running `-help` costs a
        // QEMU start (40-80 ms here) on every VM start otherwise.
        let memo = qemu_memo(qemu, "run-with");
        if let Some(v) = memo.as_ref().and_then(|m| std::fs::read_to_string(m).ok()) {
            return v == "yes";
        }
        let yes = Command::new(qemu)
            .arg("-help")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("-run-with"));
        if let Some(m) = memo {
            let tmp = m.with_extension(format!("tmp-{}", std::process::id()));
            let _ = std::fs::write(&tmp, if yes { "yes" } else { "no" })
                .and_then(|()| std::fs::rename(&tmp, &m));
        }
        yes
    });
    if run_with {
        let mut v = std::ffi::OsString::from("chroot=");
        v.push(dir);
        vec!["-run-with".into(), v]
    } else {
        vec!["-chroot".into(), dir.into()]
    }
}

/// `bin` as found on PATH (itself when it has a directory part or is not found).
pub(crate) fn resolve_binary(bin: &Path) -> PathBuf {
    if bin.components().count() > 1 {
        return bin.to_path_buf();
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
        .unwrap_or_else(|| bin.to_path_buf())
}

/// Where a fact `what` about the QEMU binary `qemu` is remembered: a file of the cache named by
/// the binary's identity (its path on PATH, size and mtime), so an upgrade asks again.
fn qemu_memo(qemu: &Path, what: &str) -> Option<PathBuf> {
    let id = crate::assets::file_identity(&resolve_binary(qemu))?;
    let key = crate::assets::short_hash(id.as_bytes(), 12);
    let dir = crate::assets::cache_dir().join("qemu");
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir.join(format!("{key}.{what}")))
}

/// The host end of agent port `i` of the VM whose run dir is `run`.
pub fn agent_socket(run: &Path, i: u32) -> PathBuf {
    if i == 0 {
        run.join("agent.sock")
    } else {
        run.join(format!("agent-{i}.sock"))
    }
}

impl Hypervisor for Qemu {
    type Instance = QemuVm;

    fn boot(&self, cfg: &VmConfig) -> Result<QemuVm> {
        cfg.validate()?;
        if cfg.template && crate::template::enabled() {
            match crate::template::boot_clone(self, cfg) {
                Ok(Some(vm)) => return Ok(vm),
                Ok(None) => {}
                Err(e) => eprintln!("moat: notice: {e}; booting the VM without a template"),
            }
        }
        let run = new_run_dir(cfg)?;
        let virtiofsd = match &cfg.shared {
            Some(dir) => match crate::virtiofs::spawn(&run, dir) {
                Ok(c) => Some(c),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&run);
                    return Err(e);
                }
            },
            None => None,
        };
        let child = match self.spawn(cfg, &run, Launch::Cold, cfg.netns.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                if let Some(mut v) = virtiofsd {
                    let _ = v.kill();
                    let _ = v.wait();
                }
                let _ = std::fs::remove_dir_all(&run);
                return Err(e);
            }
        };
        // From here on, dropping `vm` kills QEMU and virtiofsd and removes the run dir.
        let mut vm = QemuVm::new(child, virtiofsd, run);
        vm.attach_agent(cfg.agent_timeout)?;
        Ok(vm)
    }
}

/// A fresh private run directory for a VM of `cfg`, with its empty jail.
pub(crate) fn new_run_dir(cfg: &VmConfig) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let run = cfg.run_parent.join(format!(
        "moat-vm-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(run.join(JAIL_DIR))
        .map_err(VmError::io("create run dir", &run))?;
    Ok(run)
}

impl Qemu {
    /// Start QEMU for `cfg` in the network namespace `netns` (a fresh empty one for `None`),
    /// its stderr in `<run>/qemu.stderr`.
    pub(crate) fn spawn(
        &self,
        cfg: &VmConfig,
        run: &Path,
        launch: Launch<'_>,
        netns: Option<&Path>,
    ) -> Result<Child> {
        let stderr_path = run.join("qemu.stderr");
        let f = std::fs::File::create(&stderr_path).map_err(VmError::io("create", &stderr_path))?;
        let mut cmd = self.command_for(cfg, run, launch);
        cmd.stderr(f);
        // No transparent huge pages for QEMU (the flag is inherited): TCG's code buffer and a
        // clone's copy-on-write guest pages would otherwise take 2 MiB at a time (measured: 32
        // of a clone's 70 MiB of anonymous memory). Set on this process, which QEMU inherits.
        let _ = nix::sys::prctl::set_thp_disable(true);
        // QEMU lives in the VM's network namespace (its taps are there; a fresh empty
        // one without): it never sees the host's network stack.
        crate::net::in_netns(netns, move || {
            cmd.spawn().map_err(|source| VmError::Spawn {
                program: self.binary.display().to_string(),
                source,
            })
        })
    }
}

/// A running (or ended) QEMU VM.
pub struct QemuVm {
    child: Child,
    /// The server of the shared directory, when the VM has one.
    virtiofsd: Option<Child>,
    run: PathBuf,
    status: Option<ExitStatus>,
    agent: Option<AgentClient>,
    detached: bool,
    /// The template this VM is a clone of.
    template: Option<PathBuf>,
}

/// A VM left running by the process that booted it ([`QemuVm::detach`]): what a later process
/// needs to find it again.
#[derive(Debug, Clone)]
pub struct DetachedVm {
    pub pid: u32,
    /// The virtiofsd serving the shared directory (it exits when QEMU does).
    pub virtiofsd_pid: Option<u32>,
    pub run_dir: PathBuf,
    pub agent_socket: PathBuf,
}

impl QemuVm {
    pub(crate) fn new(child: Child, virtiofsd: Option<Child>, run: PathBuf) -> QemuVm {
        QemuVm {
            child,
            virtiofsd,
            run,
            status: None,
            agent: None,
            detached: false,
            template: None,
        }
    }

    /// The template this VM was resumed from (`None`: booted cold).
    pub fn template(&self) -> Option<&Path> {
        self.template.as_deref()
    }

    /// The server of the shared directory of a clone (`moat-vmfs`).
    pub(crate) fn set_share_server(&mut self, server: Child) {
        self.virtiofsd = Some(server);
    }

    pub(crate) fn set_template(&mut self, dir: &Path) {
        self.template = Some(dir.to_path_buf());
    }

    /// Connect to agent port 0 and wait for the agent's `Ready` (a cold boot).
    pub(crate) fn attach_agent(&mut self, timeout: Duration) -> Result<()> {
        // A fresh run dir: the first port's lock is free.
        let lock = crate::client::try_lock_port(&agent_socket(&self.run, 0))?;
        let stream = self.connect(Duration::from_secs(10))?;
        let mut client = AgentClient::handshake(stream, timeout).map_err(|e| self.failed(e))?;
        if let Some(l) = lock {
            client.hold_lock(l);
        }
        self.agent = Some(client);
        Ok(())
    }

    /// Connect to agent port 0 of a clone and make it unique with `restore` (its `Ready` may or
    /// may not come first: the guest resumed with the template's connection state).
    pub(crate) fn attach_clone(
        &mut self,
        timeout: Duration,
        restore: moat_agent_proto::Restore,
    ) -> Result<()> {
        let lock = crate::client::try_lock_port(&agent_socket(&self.run, 0))?;
        let stream = self.connect(Duration::from_secs(10))?;
        let mut client =
            AgentClient::restored(stream, timeout, restore).map_err(|e| self.failed(e))?;
        if let Some(l) = lock {
            client.hold_lock(l);
        }
        self.agent = Some(client);
        Ok(())
    }

    /// An agent failure as seen by the host, with what QEMU and the guest console said.
    fn failed(&self, e: VmError) -> VmError {
        match e {
            VmError::Disconnected | VmError::AgentTimeout { .. } => VmError::GuestFailed {
                reason: e.to_string(),
                qemu_stderr: self.tail("qemu.stderr"),
                console: self.tail("console.log"),
            },
            e => e,
        }
    }

    /// The VM's private run directory (removed once QEMU has exited and was waited for).
    pub fn run_dir(&self) -> &Path {
        &self.run
    }

    /// Let the VM outlive this handle (and this process): close the agent connection (the agent
    /// of a guest booted with `moat.sandbox=single` keeps serving and accepts the next
    /// connection), and neither kill QEMU nor remove the run dir on drop. The caller owns both
    /// from now on; QEMU is reparented when this process exits.
    /// Take the agent connection (for the caller to keep using after [`QemuVm::detach`]).
    pub fn take_agent(&mut self) -> Option<AgentClient> {
        self.agent.take()
    }

    pub fn detach(mut self) -> DetachedVm {
        self.detached = true;
        self.agent = None;
        DetachedVm {
            pid: self.child.id(),
            virtiofsd_pid: self.virtiofsd.as_ref().map(Child::id),
            agent_socket: agent_socket(&self.run, 0),
            run_dir: self.run.clone(),
        }
    }

    /// Host pid of the virtiofsd serving the VM's shared directory, when it has one (for
    /// [`crate::virtiofs::add_binds`]).
    pub fn virtiofsd_pid(&self) -> Option<u32> {
        self.virtiofsd.as_ref().map(Child::id)
    }

    /// The last lines of a file of the run dir, for error messages.
    pub(crate) fn tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.run.join(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// The guest's console output so far (kernel messages and the agent's log).
    pub fn console(&self) -> String {
        std::fs::read_to_string(self.run.join("console.log")).unwrap_or_default()
    }

    /// Connect to the agent socket; QEMU drops what the guest writes while no client is
    /// connected, and the socket exists once QEMU has parsed its devices, long before the guest
    /// can speak.
    fn connect(&mut self, timeout: Duration) -> Result<std::os::unix::net::UnixStream> {
        let sock = agent_socket(&self.run, 0);
        let deadline = Instant::now() + timeout;
        loop {
            match std::os::unix::net::UnixStream::connect(&sock) {
                Ok(s) => return Ok(s),
                Err(e) if Instant::now() > deadline => {
                    return Err(VmError::Io {
                        what: "connect to agent socket",
                        path: sock,
                        source: e,
                    })
                }
                Err(_) => {
                    if let Some(st) = self.try_wait()? {
                        return Err(VmError::GuestFailed {
                            reason: format!("qemu exited early: {st}"),
                            qemu_stderr: self.tail("qemu.stderr"),
                            console: String::new(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }

    fn cleanup(&mut self) {
        self.agent = None;
        if let Some(mut v) = self.virtiofsd.take() {
            // It ends by itself once QEMU has gone; do not wait for that.
            let _ = v.kill();
            let _ = v.wait();
        }
        let _ = std::fs::remove_dir_all(&self.run);
    }

    fn reaped(&mut self, st: ExitStatus) -> ExitStatus {
        self.status = Some(st);
        self.cleanup();
        st
    }
}

impl VmInstance for QemuVm {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn agent(&mut self) -> Result<&mut AgentClient> {
        self.agent.as_mut().ok_or(VmError::Disconnected)
    }

    fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if let Some(st) = self.status {
            return Ok(Some(st));
        }
        match self.child.try_wait() {
            Ok(Some(st)) => Ok(Some(self.reaped(st))),
            Ok(None) => Ok(None),
            Err(e) => Err(VmError::io("wait for qemu in", self.run.clone())(e)),
        }
    }

    fn wait(&mut self) -> Result<ExitStatus> {
        if let Some(st) = self.status {
            return Ok(st);
        }
        let st = self
            .child
            .wait()
            .map_err(VmError::io("wait for qemu in", self.run.clone()))?;
        Ok(self.reaped(st))
    }

    fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait()? {
                return Ok(Some(st));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(a) = self.agent.as_mut() {
            let _ = a.shutdown();
        }
        match self.wait_timeout(grace)? {
            Some(st) => Ok(st),
            None => self.kill(),
        }
    }

    fn kill(&mut self) -> Result<ExitStatus> {
        if self.status.is_none() {
            let _ = self.child.kill();
        }
        self.wait()
    }
}

impl Drop for QemuVm {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.cleanup();
    }
}

/// The host's TSC frequency in kHz, from /proc/cpuinfo on CPUs with a constant TSC.
pub fn host_tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let flags = info.lines().find(|l| l.starts_with("flags"))?;
    if !flags.split_whitespace().any(|f| f == "constant_tsc") {
        return None;
    }
    let mhz = info.lines().find(|l| l.starts_with("cpu MHz"))?;
    let mhz: f64 = mhz.split(':').nth(1)?.trim().parse().ok()?;
    Some((mhz * 1000.0).round() as u64)
}
