//! `moat run`: resolve (or pull) the image, claim a name, prepare the overlay rootfs, write the
//! bundle (`containers/<id>/bundle/config.json`) and drive the runtime core's create and start.
//!
//! In the foreground the container's init is moat's own child (the core forks it with
//! CLONE_PARENT), so moat forwards signals to it, waits, records the exit status and exits with
//! it. With `-d` moat forks a monitor first: the monitor's stdio is the container's log file, it
//! creates and starts the container, reports the outcome to moat over a pipe, then waits for the
//! container and records its exit (removing it with `--rm`), while moat prints the id and exits.
//!
//! The create path is single-threaded: any pull happens before, in its own blocking call whose
//! tokio runtime is gone (and its threads joined) before the core forks.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use moat_image::{ImageError, Store};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::error::{CliError, Result};
use crate::images::RegistryOptions;
use crate::meta::{self, Meta, Paths, Port, RootfsSource};
use crate::runspec::{EtcFiles, SpecArgs};

/// Everything a command needs to reach the stores.
pub struct Ctx {
    pub paths: Paths,
    /// Started by a user other than root: the command runs as root of its own user namespace
    /// (`crate::rootless`), the runtime core in its rootless mode.
    pub rootless: bool,
    pub store: Store,
    pub reg: RegistryOptions,
}

/// `moat run`'s own flags; the ones shaping the spec are in [`SpecArgs`].
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Remove the container (and its rootfs) when it exits.
    #[arg(long)]
    pub rm: bool,
    /// Run in the background: print the id; output goes to the log (`moat logs`).
    #[arg(short, long)]
    pub detach: bool,
    /// Keep stdin open (without it the container's stdin is /dev/null).
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a terminal for the container (copied to and from this terminal, raw mode; with
    /// -d its output goes to the log and the terminal stays open: use `exec -t` to get in).
    #[arg(short, long)]
    pub tty: bool,
    /// Name of the container (default: a generated adjective_noun).
    #[arg(long)]
    pub name: Option<String>,
    /// Publish a container port on the host (needs --network bridge; rootless, slirp4netns or
    /// pasta).
    #[arg(short, long, value_name = "[IP:]HOSTPORT:CTRPORT[/tcp|udp]")]
    pub publish: Vec<String>,
    /// Use DIR as the root filesystem instead of an image; all arguments are the command.
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,
    /// Isolation: `namespaces` (the default) or `vm` (the container runs in its own lightweight
    /// VM with its own guest kernel: QEMU microvm, KVM when usable, else software emulation; the
    /// VM joins the container's network namespace through a tap: --network bridge|none, -p).
    #[arg(long, value_parser = ["namespaces", "vm"], default_value = "namespaces")]
    pub isolation: String,
    #[command(flatten)]
    pub spec: SpecArgs,
    /// IMAGE [COMMAND [ARG...]], or COMMAND [ARG...] with --rootfs.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub args: Vec<String>,
}

/// Undoes a half-made container when dropped armed: runtime state, network, rootfs, dir, name.
struct Undo<'a> {
    ctx: &'a Ctx,
    id: String,
    name: Option<String>,
    armed: bool,
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if self.armed {
            remove_everything(self.ctx, &self.id, self.name.as_deref());
        }
    }
}

/// Free all that a container holds; best effort, for cleanup paths.
pub fn remove_everything(ctx: &Ctx, id: &str, name: Option<&str>) {
    let _ = crate::backend::delete(&ctx.paths.runtime(), id, id);
    let meta = ctx.paths.load(id).ok();
    let _ = crate::cni::release(&ctx.paths, id);
    if let Ok(r) = moat_image::snapshot::rootfs_of(&ctx.store, id) {
        let _ = r.unmount();
    }
    let _ = std::fs::remove_dir_all(ctx.paths.container_dir(id));
    if let Some(n) = name.or(meta.as_ref().map(|m| m.name.as_str())) {
        ctx.paths.release_name(n, id);
    }
}

/// The image's stored manifest, pulling it first when it is not in the store.
fn image(ctx: &Ctx, reference: &str) -> Result<moat_image::StoredImage> {
    match ctx.store.image(reference) {
        Ok(i) => return Ok(i),
        Err(ImageError::UnknownImage(_)) => {}
        Err(e) => return Err(CliError::image(format!("look up image {reference}"))(e)),
    }
    eprintln!("Unable to find image '{reference}' locally");
    let name = crate::images::pull(&ctx.store, reference, &ctx.reg)?;
    wait_single_threaded();
    ctx.store
        .image(&name)
        .map_err(CliError::image(format!("look up image {reference}")))
}

/// The core refuses to fork from a multi-threaded process; threads of a finished pull or unpack
/// may take a moment to leave the thread group after being joined.
fn wait_single_threaded() {
    let deadline = Instant::now() + Duration::from_secs(2);
    while moat_sys::process::thread_count().is_ok_and(|n| n != 1) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The network mode: --network, else bridge (for a VM container too: the VM joins the bridge
/// network's namespace; `host` is refused for it in `run`); rootless, slirp4netns.
fn network(a: &RunArgs, rootless: bool) -> &str {
    a.spec
        .network
        .as_deref()
        .unwrap_or(if rootless { "slirp4netns" } else { "bridge" })
}

/// What cannot work for the caller is refused before anything is made.
fn check_network(a: &RunArgs, rootless: bool) -> Result<()> {
    let net = network(a, rootless);
    if rootless && a.isolation == "vm" {
        return Err(CliError::Usage(
            "--isolation vm: VM containers are not available to rootless moat yet (run as root)"
                .into(),
        ));
    }
    if rootless && net == "bridge" {
        return Err(CliError::Usage(
            "--network bridge needs root (a bridge, veths and iptables on the host): rootless \
             moat uses slirp4netns (the default) or pasta (both with -p), none or host"
                .into(),
        ));
    }
    if !rootless && matches!(net, "slirp4netns" | "pasta") {
        return Err(CliError::Usage(format!(
            "--network {net} is a rootless network: as root use bridge (with -p), none or host"
        )));
    }
    Ok(())
}

fn parse_ports(a: &RunArgs, rootless: bool) -> Result<Vec<Port>> {
    let mut out = Vec::new();
    for p in &a.publish {
        let (spec, proto) = p.split_once('/').unwrap_or((p, "tcp"));
        if proto != "tcp" && proto != "udp" {
            return Err(CliError::Usage(format!(
                "-p {p:?}: protocol must be tcp or udp"
            )));
        }
        let parts: Vec<&str> = spec.split(':').collect();
        let (ip, hp, cp) = match parts.as_slice() {
            [h, c] => ("0.0.0.0", *h, *c),
            [i, h, c] => (*i, *h, *c),
            _ => {
                return Err(CliError::Usage(format!(
                    "-p {p:?}: expected [IP:]HOSTPORT:CTRPORT"
                )))
            }
        };
        let bad = || CliError::Usage(format!("-p {p:?}: ports are numbers 1-65535"));
        let host_port: u16 = hp.parse().map_err(|_| bad())?;
        let container_port: u16 = cp.parse().map_err(|_| bad())?;
        if host_port == 0 || container_port == 0 || ip.parse::<std::net::Ipv4Addr>().is_err() {
            return Err(bad());
        }
        out.push(Port {
            host_ip: ip.into(),
            host_port,
            container_port,
            protocol: proto.into(),
        });
    }
    if !out.is_empty() && !matches!(network(a, rootless), "bridge" | "slirp4netns" | "pasta") {
        return Err(CliError::Usage(
            "-p needs --network bridge, or slirp4netns or pasta rootless (the container has no \
             reachable address otherwise)"
                .into(),
        ));
    }
    Ok(out)
}

/// Write the files moat mounts over the container's /etc.
fn etc_files(dir: &Path, hostname: &str, network: &str) -> Result<EtcFiles> {
    let w = |name: &str, body: String| -> Result<PathBuf> {
        let p = dir.join(name);
        std::fs::write(&p, body).map_err(CliError::io("write", &p))?;
        Ok(p)
    };
    let hosts = if network == "host" {
        std::fs::read_to_string("/etc/hosts").unwrap_or_default()
    } else {
        format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n")
    };
    let resolv = match network {
        "none" => None,
        "slirp4netns" => Some(w(
            "resolv.conf",
            format!("nameserver {}\n", crate::usernet::DNS),
        )?),
        _ => {
            let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            // A loopback resolver of the host is unreachable from another network namespace.
            let usable = network == "host" || !host.contains("nameserver 127.");
            Some(w(
                "resolv.conf",
                if usable {
                    host
                } else {
                    "nameserver 8.8.8.8\n".into()
                },
            )?)
        }
    };
    Ok(EtcFiles {
        hostname: w("hostname", format!("{hostname}\n"))?,
        hosts: w("hosts", hosts)?,
        resolv_conf: resolv,
    })
}

pub fn run(ctx: &Ctx, a: &RunArgs) -> Result<i32> {
    check_network(a, ctx.rootless)?;
    let ports = parse_ports(a, ctx.rootless)?;
    let (image, cmd): (Option<moat_image::StoredImage>, &[String]) = match &a.rootfs {
        Some(_) => (None, &a.args[..]),
        None => (Some(image(ctx, &a.args[0])?), &a.args[1..]),
    };
    let id = meta::new_id()?;
    let mut undo = Undo {
        ctx,
        id: id.clone(),
        name: None,
        armed: true,
    };
    let name = match &a.name {
        Some(n) => {
            ctx.paths.reserve_name(n, &id)?;
            n.clone()
        }
        None => {
            let mut attempt = 0;
            loop {
                let n = meta::generate_name(attempt)?;
                match ctx.paths.reserve_name(&n, &id) {
                    Ok(()) => break n,
                    Err(CliError::NameInUse { .. }) if attempt < 50 => attempt += 1,
                    Err(e) => return Err(e),
                }
            }
        }
    };
    undo.name = Some(name.clone());
    let dir = ctx.paths.container_dir(&id);
    // The record first, before anything of the container exists (its rootfs mount, bundle,
    // network): a `moat run` killed from here on leaves a container that `ps -a` lists and
    // `rm -f` removes, never an anonymous directory holding a mount.
    std::fs::create_dir_all(&dir).map_err(CliError::io("mkdir", &dir))?;
    let mut m = Meta {
        id: id.clone(),
        name: name.clone(),
        rootfs: match (&a.rootfs, &image) {
            (Some(d), _) => RootfsSource::Dir { path: d.clone() },
            (None, img) => RootfsSource::Image {
                name: a.args[0].clone(),
                digest: img
                    .as_ref()
                    .map(|i| i.manifest_digest.to_string())
                    .unwrap_or_default(),
            },
        },
        command: cmd.to_vec(),
        created: moat_container::state::now_rfc3339(),
        auto_remove: a.rm,
        detached: a.detach,
        network: network(a, ctx.rootless).to_owned(),
        ports,
        ip: None,
        exit_code: None,
        finished: None,
    };
    ctx.paths.save(&m)?;
    let mut vm_image = None;
    let (rootfs, source, config) = match (&a.rootfs, &image) {
        (Some(d), _) => {
            let path = std::fs::canonicalize(d).map_err(CliError::io("open rootfs", d))?;
            (
                path.clone(),
                RootfsSource::Dir { path },
                oci_spec::image::ImageConfiguration::default(),
            )
        }
        (None, Some(img)) => {
            let digest = img.manifest_digest.to_string();
            let r = moat_image::prepare_rootfs(
                &ctx.store,
                &digest,
                &id,
                &moat_image::UnpackOptions::default(),
            )
            .map_err(CliError::image(format!("prepare the rootfs of {name}")))?;
            if r.copied {
                eprintln!(
                    "moat: no overlay in this user namespace (Linux 5.11+ allows one; or \
                     MOAT_ROOTFS_COPY=1): the image's layers were copied into the rootfs"
                );
            }
            if a.isolation == "vm" && moat_vm::template::enabled() {
                vm_image = crate::vmimage::rootfs_image(&ctx.store, img, &r.path);
            }
            let norm = moat_image::reference::normalize(&a.args[0]).unwrap_or(a.args[0].clone());
            (
                r.path,
                RootfsSource::Image { name: norm, digest },
                img.config.clone(),
            )
        }
        (None, None) => unreachable!("an image is resolved when there is no --rootfs"),
    };
    let hostname = a
        .spec
        .hostname
        .clone()
        .unwrap_or_else(|| id[..12].to_owned());
    let etc = etc_files(&dir, &hostname, network(a, ctx.rootless))?;
    let vm = a.isolation == "vm";
    // What cannot work is refused, never silently dropped.
    if vm && network(a, ctx.rootless) == "host" {
        return Err(CliError::Usage(
            "--isolation vm: --network host is not possible: a VM cannot share the host's network \
             stack (use --network bridge, with -p to publish ports, or --network none)"
                .into(),
        ));
    }
    let mut spec = crate::runspec::build(&a.spec, &config, cmd, &rootfs, &hostname, &etc, a.tty)?;
    if ctx.rootless {
        crate::runspec::adapt_rootless(&mut spec);
        if let Some(parent) = crate::rootless::delegated_cgroup() {
            let path = parent.join(format!("moat-{}", &id[..12]));
            if let Some(l) = spec.linux_mut() {
                l.set_cgroups_path(Some(path));
            }
        }
    }
    // A VM container on the bridge network joins a namespace made for it (`cni::setup_vm`), with
    // a tap joined to its `eth0`; with --network none it gets a fresh one (loopback only).
    let vm_netns = (vm && network(a, ctx.rootless) == "bridge").then(|| ctx.paths.netns(&id));
    if let Some(pin) = &vm_netns {
        crate::runspec::join_netns(&mut spec, pin);
    }
    if vm {
        // Bind mounts (-v, and moat's /etc/hostname, /etc/hosts, /etc/resolv.conf) reach the
        // guest over virtiofs, read-only ones read-only on the host (docs/vm-transport.md).
        let mut ann = spec.annotations().clone().unwrap_or_default();
        ann.insert(
            moat_runtime::vm_backend::ISOLATION_ANNOTATION.into(),
            "vm".into(),
        );
        if let Some(img) = &vm_image {
            ann.insert(
                moat_runtime::vm_backend::ROOTFS_IMAGE_ANNOTATION.into(),
                img.display().to_string(),
            );
        }
        spec.set_annotations(Some(ann));
    }
    let bundle = ctx.paths.bundle(&id);
    std::fs::create_dir_all(&bundle).map_err(CliError::io("mkdir", &bundle))?;
    let cfg = bundle.join("config.json");
    let body = serde_json::to_vec_pretty(&spec).unwrap_or_default();
    std::fs::write(&cfg, body).map_err(CliError::io("write", &cfg))?;
    // The early record, completed: the resolved source and the command the spec runs.
    m.rootfs = source;
    m.command = spec
        .process()
        .as_ref()
        .and_then(|p| p.args().clone())
        .unwrap_or_default();
    ctx.paths.save(&m)?;
    if let Some(pin) = &vm_netns {
        crate::cni::setup_vm(&mut m, pin)?;
        ctx.paths.save(&m)?;
    }
    // Held until this process and, with -d, its monitor (which shares the lock) are done with
    // the container's directory: `moat rm` waits for it before removing the directory.
    let _finishing = crate::meta::hold_finish_lock(&ctx.paths, &id)?;
    wait_single_threaded();
    if a.detach {
        let code = detached(ctx, m, a.tty, vm, &mut undo)?;
        println!("{id}");
        return Ok(code);
    }
    if !a.interactive {
        stdin_null()?;
    }
    if vm {
        let opts = moat_container::CreateOptions {
            id: id.clone(),
            bundle: ctx.paths.bundle(&id),
            ..Default::default()
        };
        let r = moat_runtime::vm_backend::run_code(&ctx.paths.runtime(), &opts, false, false);
        undo.armed = false;
        let code = match r {
            Ok(code) => code,
            Err(e) => {
                finish(ctx, &id, 125);
                return Err(CliError::Usage(format!(
                    "run container {name} in a VM: {e:#}"
                )));
            }
        };
        finish(ctx, &id, code);
        return Ok(code);
    }
    let console = if a.tty {
        Some(crate::tty::ConsoleSocket::listen(
            &ctx.paths.container_dir(&id),
            &ctx.paths.short_socket_dir(),
        )?)
    } else {
        None
    };
    // The network helper (slirp4netns) lives until the container has been waited for.
    let (pid, _net) = create_and_start(ctx, m, console.as_ref().map(|c| c.path().to_path_buf()))?;
    undo.armed = false;
    let _attached = console.map(|c| c.attach()).transpose()?;
    let code = wait_forwarding(pid)?;
    finish(ctx, &id, code);
    Ok(code)
}

fn stdin_null() -> Result<()> {
    let null = std::fs::File::open("/dev/null").map_err(CliError::io("open", "/dev/null"))?;
    nix::unistd::dup2(null.as_raw_fd(), 0).map_err(CliError::sys("dup2 /dev/null onto stdin"))?;
    Ok(())
}

/// Create the container, set up its network, start it; returns the init's pid and the network
/// helper to keep while the container runs (slirp4netns). On failure the runtime state is
/// removed (the caller's `Undo` removes the rest).
fn create_and_start(
    ctx: &Ctx,
    mut m: Meta,
    console_socket: Option<PathBuf>,
) -> Result<(Pid, Option<crate::usernet::UserNet>)> {
    let rt = ctx.paths.runtime();
    let opts = moat_container::CreateOptions {
        id: m.id.clone(),
        bundle: ctx.paths.bundle(&m.id),
        console_socket,
        rootless: ctx.rootless,
        ..Default::default()
    };
    let created = moat_container::create(&rt, &opts)
        .map_err(CliError::container(format!("create container {}", m.name)))?;
    let started = (|| -> Result<Option<crate::usernet::UserNet>> {
        let net = if matches!(m.network.as_str(), "slirp4netns" | "pasta") {
            let dir = ctx.paths.container_dir(&m.id);
            Some(crate::usernet::start(
                &m.network,
                created.pid,
                &dir,
                &m.ports,
            )?)
        } else {
            let pin = ctx.paths.netns(&m.id);
            crate::cni::setup(&mut m, created.pid, &pin)?;
            None
        };
        ctx.paths.save(&m)?;
        moat_container::start::start(&rt, &m.id)
            .map_err(CliError::container(format!("start container {}", m.name)))?;
        Ok(net)
    })();
    match started {
        Ok(net) => Ok((Pid::from_raw(created.pid), net)),
        Err(e) => {
            let _ = moat_container::delete::delete(&rt, &m.id, true);
            Err(e)
        }
    }
}

/// Record the exit of container `id`, free its runtime state and network, and remove it all
/// when it was run with `--rm`.
pub fn finish(ctx: &Ctx, id: &str, code: i32) {
    let Ok(mut m) = ctx.paths.load(id) else {
        // Removed meanwhile (`moat rm -f`): only the runtime state may be left.
        let _ = crate::backend::delete(&ctx.paths.runtime(), id, id);
        return;
    };
    if m.auto_remove {
        remove_everything(ctx, id, Some(&m.name));
        return;
    }
    // The exit status first: `moat stop` waits until it is recorded.
    m.exit_code = Some(code);
    m.finished = Some(moat_container::state::now_rfc3339());
    let _ = ctx.paths.save(&m);
    let _ = crate::backend::delete(&ctx.paths.runtime(), id, id);
    let _ = crate::cni::release(&ctx.paths, id);
}

/// `-d`: fork a monitor that creates, starts and waits for the container.
fn detached(ctx: &Ctx, m: Meta, tty: bool, vm: bool, undo: &mut Undo<'_>) -> Result<i32> {
    let log_path = ctx.paths.log(&m.id);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(CliError::io("open log", &log_path))?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(CliError::io("open", "/dev/null"))?;
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(CliError::sys("create the monitor pipe"))?;
    let id = m.id.clone();
    match moat_sys::process::clone3(0, false).map_err(CliError::sys("fork the monitor"))? {
        moat_sys::process::Forked::Child => {
            drop(rd);
            if vm {
                vm_monitor(ctx, m, undo, wr, &log, &null)
            }
            monitor(ctx, m, tty, undo, wr, &log, &null)
        }
        moat_sys::process::Forked::Parent { pid, .. } => {
            drop(wr);
            let mut msg = String::new();
            let _ = std::fs::File::from(rd).read_to_string(&mut msg);
            // Reap the monitor only if it already exited (it outlives us otherwise).
            let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
            if msg == "ok" {
                undo.armed = false;
                return Ok(0);
            }
            if let Some(rest) = msg.strip_prefix("err\t") {
                undo.armed = false; // the monitor cleaned up
                let (code, text) = rest.split_once('\t').unwrap_or(("125", rest));
                return Err(CliError::Detached {
                    code: code.parse().unwrap_or(125),
                    message: text.into(),
                });
            }
            Err(CliError::Usage(format!(
                "container {id}: the monitor process exited before reporting"
            )))
        }
    }
}

/// A monitor's session and stdio: its own session, stdin from /dev/null, stdout and stderr
/// to the container's log.
fn detach_stdio(log: &std::fs::File, null: &std::fs::File) {
    let _ = nix::unistd::setsid();
    let _ = nix::unistd::dup2(null.as_raw_fd(), 0);
    let _ = nix::unistd::dup2(log.as_raw_fd(), 1);
    let _ = nix::unistd::dup2(log.as_raw_fd(), 2);
}

/// The monitor of a detached VM container: stays attached to the guest's agent, so the
/// container's output reaches the log (the agent drops output while no host is attached).
fn vm_monitor(
    ctx: &Ctx,
    m: Meta,
    undo: &mut Undo<'_>,
    wr: OwnedFd,
    log: &std::fs::File,
    null: &std::fs::File,
) -> ! {
    // Until the container runs, what the set-up says (a template built, a cold-boot notice)
    // goes to the caller's stderr, not into the container's log.
    let caller_stderr = std::io::stderr().as_fd().try_clone_to_owned().ok();
    detach_stdio(log, null);
    if let Some(e) = &caller_stderr {
        let _ = nix::unistd::dup2(e.as_raw_fd(), 2);
    }
    let id = m.id.clone();
    let opts = moat_container::CreateOptions {
        id: id.clone(),
        bundle: ctx.paths.bundle(&id),
        ..Default::default()
    };
    let mut wr = Some(std::fs::File::from(wr));
    let mut caller_stderr = caller_stderr;
    let r =
        moat_runtime::vm_backend::run_attached(&ctx.paths.runtime(), &opts, true, false, || {
            let _ = nix::unistd::dup2(log.as_raw_fd(), 2);
            caller_stderr = None;
            if let Some(mut w) = wr.take() {
                let _ = w.write_all(b"ok");
            }
            // This process now only follows the container: give back what the set-up used.
            moat_sys::process::release_free_heap();
        });
    undo.armed = false;
    match (r, wr) {
        (Ok(code), _) => {
            finish(ctx, &id, code);
            std::process::exit(0)
        }
        // It ran, then following it failed: record it and say why in the log.
        (Err(e), None) => {
            eprintln!("error: follow VM container {id}: {e}");
            finish(ctx, &id, 125);
            std::process::exit(1)
        }
        (Err(e), Some(mut w)) => {
            remove_everything(ctx, &id, undo.name.as_deref());
            let e = CliError::vm(format!("run container {id} in a VM"))(e);
            let text = crate::one_line(&anyhow::Error::new(e));
            let _ = write!(w, "err\t125\t{text}");
            std::process::exit(1)
        }
    }
}

fn monitor(
    ctx: &Ctx,
    m: Meta,
    tty: bool,
    undo: &mut Undo<'_>,
    wr: OwnedFd,
    log: &std::fs::File,
    null: &std::fs::File,
) -> ! {
    detach_stdio(log, null);
    let id = m.id.clone();
    let mut wr = std::fs::File::from(wr);
    #[allow(clippy::type_complexity)]
    let started = (|| -> Result<(Pid, Option<OwnedFd>, Option<crate::usernet::UserNet>)> {
        let console = if tty {
            Some(crate::tty::ConsoleSocket::listen(
                &ctx.paths.container_dir(&id),
                &ctx.paths.short_socket_dir(),
            )?)
        } else {
            None
        };
        let path = console.as_ref().map(|c| c.path().to_path_buf());
        let (pid, net) = create_and_start(ctx, m, path)?;
        let terminal = match console {
            Some(c) => {
                let log = log.try_clone().map_err(CliError::io("dup", "log"))?;
                Some(crate::tty::log_terminal(c.receive_master()?, log)?)
            }
            None => None,
        };
        Ok((pid, terminal, net))
    })();
    match started {
        Ok((pid, _terminal, net)) => {
            undo.armed = false;
            let _ = wr.write_all(b"ok");
            drop(wr);
            let code = wait_plain(pid);
            finish(ctx, &id, code);
            drop(net); // `exit` runs no destructor
            std::process::exit(0)
        }
        Err(e) => {
            remove_everything(ctx, &id, undo.name.as_deref());
            undo.armed = false;
            let code = e.exit_code();
            let text = crate::one_line(&anyhow::Error::new(e));
            let _ = write!(wr, "err\t{code}\t{text}");
            std::process::exit(1)
        }
    }
}

fn exit_code(ws: WaitStatus) -> Option<i32> {
    match ws {
        WaitStatus::Exited(_, c) => Some(c),
        WaitStatus::Signaled(_, s, _) => Some(128 + s as i32),
        _ => None,
    }
}

/// Wait for our child `pid` without forwarding signals (the monitor has no terminal).
fn wait_plain(pid: Pid) -> i32 {
    loop {
        match waitpid(pid, None) {
            Ok(ws) => {
                if let Some(c) = exit_code(ws) {
                    return c;
                }
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return 255,
        }
    }
}

pub(crate) const FORWARDED: &[Signal] = &[
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGCONT,
    Signal::SIGALRM,
];

/// Wait for our child `pid` while forwarding terminal and job-control signals to it; returns
/// its exit status, 128+N when killed by signal N.
pub fn wait_forwarding(pid: Pid) -> Result<i32> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    for s in FORWARDED {
        set.add(*s);
    }
    set.thread_block()
        .map_err(CliError::sys("block signals while waiting"))?;
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(ws) => {
                if let Some(c) = exit_code(ws) {
                    return Ok(c);
                }
            }
            Err(nix::errno::Errno::ECHILD) => return Ok(255),
            Err(e) => return Err(CliError::sys(format!("wait for process {pid}"))(e)),
        }
        if let Ok(sig) = set.wait() {
            if sig != Signal::SIGCHLD {
                let _ = nix::sys::signal::kill(pid, sig);
            }
        }
    }
}
