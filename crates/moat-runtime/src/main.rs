//! `moat-runtime`: the runc-compatible command line of moat. It turns runc's flags into calls on
//! the runtime core (`moat-container`) and reports failures as one `error:` line on stderr (and in
//! `--log`), with a non-zero exit status.

mod exec_cmd;
mod features;
mod log;
mod resource_cmds;
mod run;
mod spec_cmd;
use moat_runtime::vm_backend;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Arg, ArgAction, CommandFactory, FromArgMatches, Parser, Subcommand};
use moat_container::{state::Status, Store};

use crate::log::{LogFormat, Logger};

/// An OCI container runtime with runc's command line: namespaces, or a VM per container when the
/// bundle's config.json has the annotation `io.moat.isolation=vm`.
///
/// Typical use: `moat-runtime spec` in a bundle directory holding `rootfs/`, then
/// `moat-runtime run --bundle . mycontainer`. podman (`--runtime`), containerd (`runc` shim with
/// `BinaryName`) and Docker can call it in place of runc.
#[derive(Parser, Debug)]
#[command(name = "moat-runtime", about, long_about = None)]
struct Cli {
    /// Directory holding the state of containers [default: /run/moat; $XDG_RUNTIME_DIR/moat for a
    /// non-root user, as runc].
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Append log lines to FILE (errors are also printed on stderr).
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
    /// Format of the lines in --log.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log debug details.
    #[arg(long)]
    debug: bool,
    /// Use systemd to manage cgroups (needs a running systemd; refused with a clear error otherwise).
    #[arg(long)]
    systemd_cgroup: bool,
    /// Rootless mode (auto, true or false): cgroups are used where the user may write them and
    /// skipped elsewhere unless a limit needs them. auto: when not root or in a user namespace.
    #[arg(long, value_name = "auto|true|false", default_value = "auto")]
    rootless: String,
    /// Accepted for runc compatibility (checkpoint/restore is not supported).
    #[arg(long, hide = true, value_name = "PATH")]
    criu: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create a container from a bundle; its process waits until `start`.
    Create(CreateArgs),
    /// Start the user process of a created container.
    Start { id: String },
    /// Print the OCI state of a container as JSON.
    State { id: String },
    /// Send a signal (default SIGTERM) to a container's init, or to all its processes with --all.
    Kill {
        /// Signal every process in the container's cgroup.
        #[arg(short, long)]
        all: bool,
        id: String,
        /// Signal name (KILL, SIGKILL) or number (9).
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Delete a container and everything it holds (cgroup, state); --force kills it first.
    Delete {
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// Create and start a container; without --detach, wait and exit with its status.
    Run {
        #[command(flatten)]
        create: CreateArgs,
        /// Return once the container has started.
        #[arg(short, long)]
        detach: bool,
        /// Keep the container's state after it exits (runc's --keep).
        #[arg(long)]
        keep: bool,
    },
    /// List containers.
    #[command(alias = "ps-all")]
    List {
        #[arg(short, long, value_parser = ["table", "json"], default_value = "table")]
        format: String,
        /// Print only the ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Write a default config.json into the bundle.
    Spec {
        /// Write a spec for a rootless container (user namespace mapping the current user).
        #[arg(long)]
        rootless: bool,
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
    },
    /// Print the OCI features this runtime implements as JSON.
    Features,
    /// Freeze every process of a running container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// Change the resource limits of a live container.
    Update(Box<resource_cmds::UpdateArgs>),
    /// List the processes of a container (ps arguments may follow the id; --format json gives pids).
    Ps {
        #[arg(short, long, value_parser = ["table", "json"], default_value = "table")]
        format: String,
        id: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Print container events as JSON lines: stats every --interval and oom; --stats prints one.
    Events {
        /// Print one stats event and exit.
        #[arg(long)]
        stats: bool,
        /// Interval between stats events.
        #[arg(long, default_value = "5s")]
        interval: String,
        id: String,
    },
    /// Run a new process inside a running container; waits and returns its exit status unless -d.
    Exec(Box<exec_cmd::ExecArgs>),
    /// Internal: the relay of a detached VM container's terminal (started by create, run -d and
    /// exec -d with --console-socket; see `moat_runtime::vm_backend::terminal`).
    #[command(name = "vm-console-relay", hide = true)]
    VmConsoleRelay {
        id: String,
        #[arg(long)]
        exec_id: Option<String>,
        #[arg(long)]
        process: Option<PathBuf>,
    },
    /// Internal: gives an idle VM container's cold pages back while nothing else of moat
    /// follows it (started by start; see `moat_runtime::vm_backend::reclaimer`).
    #[command(name = "vm-reclaim", hide = true)]
    VmReclaim { id: String },
    /// Not implemented: checkpoint, restore.
    #[command(external_subcommand)]
    Other(Vec<String>),
}

#[derive(clap::Args, Debug)]
struct CreateArgs {
    /// Path to the bundle directory (holding config.json).
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    /// Write the container init's pid to this file.
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// Unix socket that receives the pty master when process.terminal is true.
    #[arg(long, value_name = "SOCK")]
    console_socket: Option<PathBuf>,
    /// Use MS_MOVE + chroot instead of pivot_root (for a rootfs on initramfs).
    #[arg(long)]
    no_pivot: bool,
    /// Do not create a new session keyring for the container.
    #[arg(long)]
    no_new_keyring: bool,
    /// Pass N extra file descriptors (3..3+N) to the container process.
    #[arg(long, default_value_t = 0, value_name = "N")]
    preserve_fds: u32,
    id: String,
}

impl CreateArgs {
    fn options(&self, systemd: bool, rootless: bool) -> moat_container::CreateOptions {
        // Socket activation, as runc: LISTEN_FDS meant for us (LISTEN_PID is our pid) pass fds
        // 3..3+LISTEN_FDS to the container first, with LISTEN_FDS and LISTEN_PID=1 in its
        // environment; --preserve-fds count from there.
        let listen = listen_fds();
        moat_container::CreateOptions {
            id: self.id.clone(),
            bundle: self.bundle.clone(),
            pid_file: self.pid_file.clone(),
            console_socket: self.console_socket.clone(),
            no_pivot: self.no_pivot,
            no_new_keyring: self.no_new_keyring,
            preserve_fds: listen + self.preserve_fds,
            systemd_cgroup: systemd,
            console: None,
            extra_env: if listen > 0 {
                vec![format!("LISTEN_FDS={listen}"), "LISTEN_PID=1".into()]
            } else {
                vec![]
            },
            rootless,
        }
    }
}

/// `LISTEN_FDS` of systemd's socket activation, when `LISTEN_PID` names this process.
fn listen_fds() -> u32 {
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|_| ours)
        .unwrap_or(0)
}

/// Descriptors 3..3+N that `--preserve-fds N` (after the LISTEN_FDS ones) hands to the container
/// must be the caller's: checked before this process opens anything, or one of its own (a log
/// file, the exec fifo, a socket) could take a free number in that range and reach the container.
/// Returns the error to report for the first one that is not open.
fn check_preserved_fds() -> Option<String> {
    let mut args = std::env::args().skip_while(|a| a != "create" && a != "run" && a != "exec");
    let mut n: u32 = 0;
    while let Some(a) = args.next() {
        if let Some(v) = a.strip_prefix("--preserve-fds=") {
            n = v.parse().unwrap_or(0);
        } else if a == "--preserve-fds" {
            n = args.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        }
    }
    let total = n + listen_fds();
    (3..3 + total as i32)
        .find(|fd| nix::fcntl::fcntl(*fd, nix::fcntl::FcntlArg::F_GETFD).is_err())
        .map(|fd| {
            format!(
                "--preserve-fds {n}: file descriptor {fd} is not open in the caller \
                 (pass descriptors 3..{} to moat-runtime)",
                2 + total
            )
        })
}

fn main() -> ExitCode {
    // CVE-2019-5736: run from a sealed copy of ourselves before touching a container's namespaces.
    // Decided before parsing the command line, so that the first image does as little as possible
    // (the re-executed one parses it): any argument spelling a command that enters a container is
    // enough (`delete run` re-executes needlessly, which is harmless; none is ever missed).
    let enters = std::env::args_os()
        .skip(1)
        .any(|a| a == "create" || a == "run" || a == "exec");
    let sealed = enters && moat_sys::fd::running_from_sealed_copy();
    let reexec_failed = (enters && !sealed).then(moat_sys::fd::reexec_from_sealed_copy);
    let preserve_error = check_preserved_fds();
    let cli = Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|e| e.exit());
    let mut log = Logger::new(cli.log.as_deref(), cli.log_format, cli.debug);
    if let Some(e) = preserve_error {
        log.error(&e);
        return ExitCode::FAILURE;
    }
    if let Some(e) = reexec_failed {
        log.error(&format!(
            "re-execute from a sealed copy of the runtime binary: {e}"
        ));
        return ExitCode::FAILURE;
    }
    if matches!(cli.cmd, Cmd::Create(_) | Cmd::Run { .. } | Cmd::Exec(_)) && !sealed {
        log.error("not running from a sealed copy of the runtime binary");
        return ExitCode::FAILURE;
    }
    log.debug(&format!("{:?}", cli.cmd));
    match dispatch(&cli, &mut log) {
        Ok(code) => code,
        Err(e) => {
            log.error(&one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// runc's help layout (NAME and USAGE sections, which scripts parse) for the top level and every
/// command.
fn help_template(name: &str) -> &'static str {
    let t = format!(
        "NAME:\n   {name} - {{about}}\n\nUSAGE:\n   {{usage}}\n\n{{all-args}}{{after-help}}"
    );
    Box::leak(t.into_boxed_str())
}

/// The command line with runc's help sections and its `--version`/`-v`: `moat-runtime version X`
/// then the OCI runtime spec version, as runc prints them.
fn command() -> clap::Command {
    let version: &'static str = Box::leak(
        format!(
            "version {}\nspec: {}",
            env!("CARGO_PKG_VERSION"),
            moat_container::state::OCI_VERSION
        )
        .into_boxed_str(),
    );
    Cli::command()
        .version(version)
        .disable_version_flag(true)
        .arg(
            Arg::new("version")
                .short('v')
                .long("version")
                .action(ArgAction::Version)
                .help("Print the version"),
        )
        .help_template(help_template("moat-runtime"))
        .mut_subcommands(|s| {
            let t = help_template(&format!("moat-runtime {}", s.get_name()));
            s.help_template(t)
        })
}

fn dispatch(cli: &Cli, log: &mut Logger) -> Result<ExitCode> {
    let store = Store::new(state_root(cli.root.as_deref()));
    let rootless = match &cli.rootless[..] {
        "true" => true,
        "false" => false,
        // Only the commands that create a cgroup need to know (root outside a user namespace
        // pays one read of /proc/self/uid_map there, as with runc).
        "auto" if matches!(cli.cmd, Cmd::Create(_) | Cmd::Run { .. }) => {
            !moat_sys::nix::unistd::geteuid().is_root()
                || moat_container::namespaces::NsPlan::running_in_userns()
        }
        "auto" => false,
        other => bail!("--rootless {other:?}: expected auto, true or false"),
    };
    if let Some(code) = dispatch_vm(cli, &store)? {
        return Ok(code);
    }
    match &cli.cmd {
        Cmd::VmConsoleRelay {
            id,
            exec_id,
            process,
        } => {
            let exec = exec_id.as_deref().zip(process.as_deref());
            return Ok(vm_backend::terminal::relay_main(&store, id, exec));
        }
        Cmd::VmReclaim { id } => return Ok(vm_backend::reclaimer::reclaim_main(&store, id)),
        Cmd::Create(a) => {
            if a.console_socket.is_none() {
                run::check_detached_terminal(run::bundle_terminal(&a.bundle)?, false)?;
            }
            let created = moat_container::create(&store, &a.options(cli.systemd_cgroup, rootless))
                .with_context(|| format!("create container {}", a.id))?;
            for w in &created.warnings {
                log.warn(w);
            }
            for n in &created.notes {
                log.debug(n);
            }
        }
        Cmd::Start { id } => moat_container::start::start(&store, id)
            .with_context(|| format!("start container {id}"))?,
        Cmd::State { id } => {
            let st = store.load(id)?;
            println!("{}", serde_json::to_string_pretty(&store.oci_state(&st))?);
        }
        Cmd::Kill { all, id, signal } => {
            let sig = moat_container::kill::parse_signal(signal)
                .with_context(|| format!("kill container {id}: unknown signal {signal:?}"))?;
            moat_container::kill::kill(&store, id, sig, *all)
                .with_context(|| format!("kill container {id}"))?;
        }
        Cmd::Delete { force, id } => moat_container::delete::delete(&store, id, *force)
            .with_context(|| format!("delete container {id}"))?,
        Cmd::Run {
            create,
            detach,
            keep,
        } => {
            return run::run(
                &store,
                &create.options(cli.systemd_cgroup, rootless),
                *detach,
                *keep,
                log,
            )
        }
        Cmd::List { format, quiet } => list(&store, format, *quiet)?,
        Cmd::Spec { rootless, bundle } => spec_cmd::write_spec(bundle, *rootless)?,
        Cmd::Exec(a) => return exec_cmd::exec(&store, a, log),
        Cmd::Pause { id } => moat_container::pause::pause(&store, id)
            .with_context(|| format!("pause container {id}"))?,
        Cmd::Resume { id } => moat_container::pause::resume(&store, id)
            .with_context(|| format!("resume container {id}"))?,
        Cmd::Update(a) => resource_cmds::update(&store, a)?,
        Cmd::Ps {
            format,
            id,
            ps_args,
        } => resource_cmds::ps(&store, id, format, ps_args)
            .with_context(|| format!("ps container {id}"))?,
        Cmd::Events {
            stats,
            interval,
            id,
        } => {
            let every = resource_cmds::parse_interval(interval)?;
            resource_cmds::events(&store, id, *stats, every)
                .with_context(|| format!("events of container {id}"))?
        }
        Cmd::Features => println!("{}", serde_json::to_string_pretty(&features::features())?),
        Cmd::Other(args) => {
            let name = args.first().map(String::as_str).unwrap_or("");
            match name {
                "checkpoint" | "restore" => {
                    bail!("`{name}`: checkpoint/restore is not supported by moat")
                }
                _ => bail!("unknown command {name:?}; see `moat-runtime --help`"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The state directory: `--root`, else runc's default: `$XDG_RUNTIME_DIR/moat` when
/// `XDG_RUNTIME_DIR` is set and the caller is not the real root (a non-root euid, or euid 0 in a
/// user namespace with `USER` unset or not `root`, as under rootless podman), `/run/moat`
/// otherwise.
fn state_root(root: Option<&std::path::Path>) -> PathBuf {
    if let Some(r) = root {
        return r.to_path_buf();
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(x) if !x.is_empty() && honor_xdg_runtime_dir() => PathBuf::from(x).join("moat"),
        _ => PathBuf::from("/run/moat"),
    }
}

/// runc's `shouldHonorXDGRuntimeDir`.
fn honor_xdg_runtime_dir() -> bool {
    if !moat_sys::nix::unistd::geteuid().is_root() {
        return true;
    }
    moat_container::namespaces::NsPlan::running_in_userns()
        && std::env::var_os("USER").is_none_or(|u| u != "root")
}

/// The one dispatch point between the backends: every command naming a VM container
/// (`io.moat.isolation=vm` in its bundle) goes to [`vm_backend`]; `None` for everything else.
/// For a namespaces container this costs a scan of config.json's text (create, run) or one
/// stat (the commands taking an id). A command the VM backend does not implement fails with
/// one error saying so, and never acts on the host.
fn dispatch_vm(cli: &Cli, store: &Store) -> Result<Option<ExitCode>> {
    use vm_backend::Backend;
    let backend = match &cli.cmd {
        Cmd::Create(a) | Cmd::Run { create: a, .. } => Backend::of_bundle(&a.bundle)?,
        Cmd::Start { id }
        | Cmd::State { id }
        | Cmd::Kill { id, .. }
        | Cmd::Delete { id, .. }
        | Cmd::Pause { id }
        | Cmd::Resume { id }
        | Cmd::Ps { id, .. }
        | Cmd::Events { id, .. } => Backend::of_container(store, id),
        Cmd::Exec(a) => Backend::of_container(store, &a.id),
        Cmd::Update(a) => Backend::of_container(store, &a.id),
        Cmd::List { .. }
        | Cmd::Spec { .. }
        | Cmd::Features
        | Cmd::Other(_)
        | Cmd::VmConsoleRelay { .. }
        | Cmd::VmReclaim { .. } => Backend::Namespaces,
    };
    if backend == Backend::Namespaces {
        return Ok(None);
    }
    match &cli.cmd {
        Cmd::Create(a) => {
            vm_backend::create(store, &a.options(cli.systemd_cgroup, false))
                .with_context(|| format!("create container {}", a.id))?;
        }
        Cmd::Run {
            create,
            detach,
            keep,
        } => {
            return vm_backend::run(store, &create.options(cli.systemd_cgroup, false), *detach, *keep)
                .with_context(|| format!("run container {}", create.id))
                .map(Some)
        }
        Cmd::Start { id } => {
            vm_backend::start(store, id).with_context(|| format!("start container {id}"))?;
        }
        Cmd::State { id } => {
            println!(
                "{}",
                serde_json::to_string_pretty(&vm_backend::state(store, id)?)?
            )
        }
        Cmd::Kill { all, id, signal } => {
            let sig = moat_container::kill::parse_signal(signal)
                .with_context(|| format!("kill container {id}: unknown signal {signal:?}"))?;
            vm_backend::kill(store, id, sig, *all)
                .with_context(|| format!("kill container {id}"))?;
        }
        Cmd::Delete { force, id } => vm_backend::delete(store, id, *force)
            .with_context(|| format!("delete container {id}"))?,
        Cmd::Pause { id } => {
            vm_backend::pause(store, id).with_context(|| format!("pause container {id}"))?
        }
        Cmd::Resume { id } => {
            vm_backend::resume(store, id).with_context(|| format!("resume container {id}"))?
        }
        Cmd::Exec(a) => return exec_cmd::exec_vm(store, a).map(Some),
        Cmd::Ps {
            format,
            id,
            ps_args,
        } => {
            if !ps_args.is_empty() {
                bail!("ps of VM container {id}: ps arguments are not supported (the processes are in the guest)");
            }
            let procs = vm_backend::ps(store, id).with_context(|| format!("ps container {id}"))?;
            if format == "json" {
                let pids: Vec<i32> = procs.iter().map(|p| p.pid).collect();
                println!("{}", serde_json::to_string(&pids)?);
            } else {
                println!("{:>7} CMD", "PID");
                for p in procs {
                    println!("{:>7} {}", p.pid, p.command);
                }
            }
        }
        Cmd::Events {
            stats,
            interval,
            id,
        } => {
            let every = resource_cmds::parse_interval(interval)?;
            vm_backend::events(store, id, *stats, every)
                .with_context(|| format!("events of container {id}"))?
        }
        Cmd::Update(a) => bail!(
            "update container {}: not supported for a VM container (its limits are the VM's size, fixed at create)",
            a.id
        ),
        Cmd::List { .. }
        | Cmd::Spec { .. }
        | Cmd::Features
        | Cmd::Other(_)
        | Cmd::VmConsoleRelay { .. }
        | Cmd::VmReclaim { .. } => {
            unreachable!("commands without a container id use the namespaces path")
        }
    }
    Ok(Some(ExitCode::SUCCESS))
}

fn list(store: &Store, format: &str, quiet: bool) -> Result<()> {
    let mut states = Vec::new();
    for id in store.list()? {
        if let Ok(st) = store.load(&id) {
            states.push(store.oci_state(&st));
        }
    }
    states.extend(vm_backend::list(store));
    states.sort_by(|a, b| a.id.cmp(&b.id));
    if quiet {
        for s in &states {
            println!("{}", s.id);
        }
    } else if format == "json" {
        println!("{}", serde_json::to_string(&states)?);
    } else {
        println!(
            "{:<20} {:<8} {:<10} {:<40} {:<32} OWNER",
            "ID", "PID", "STATUS", "BUNDLE", "CREATED"
        );
        for s in &states {
            println!(
                "{:<20} {:<8} {:<10} {:<40} {:<32} {}",
                s.id,
                s.pid,
                s.status,
                s.bundle.display(),
                s.created,
                if s.owner.is_empty() { "root" } else { &s.owner }
            );
        }
    }
    let _ = Status::Stopped;
    Ok(())
}

/// The error and its causes on one line, skipping a cause whose text the previous message already
/// carries (library errors often embed their source). Multi-line messages (a VM that failed to
/// boot carries the tail of its console) are folded with ` | `.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out.lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}
