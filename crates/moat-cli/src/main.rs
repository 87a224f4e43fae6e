//! `moat`: the high-level command line of moat, in the spirit of `docker` and `podman`. It pulls
//! and manages images (`moat-image`), turns `moat run`'s flags into a hardened OCI spec and a
//! bundle, and drives the runtime core (`moat-container`) as a library: no daemon, no second
//! runtime binary. Errors are one `error: ...` line on stderr (or a JSON line with
//! `--log-format json`); the exit status is 125 for moat's own failures, 126/127 when the
//! container's command cannot be run or found, and the container's status otherwise.

mod backend;
mod cni;
mod error;
mod images;
mod lifecycle;
mod login;
mod meta;
mod progress;
mod rootless;
mod run;
mod runspec;
mod tty;
mod usernet;
mod vmimage;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::error::CliError;
use crate::images::RegistryOptions;
use crate::run::Ctx;

/// Run containers from OCI images with moat's hardened defaults.
///
/// Examples:
///   moat pull busybox
///   moat run --rm busybox echo hello
///   moat run -d --name web --network bridge -p 127.0.0.1:8080:80 busybox httpd -f -p 80
///   moat logs web; moat stop web; moat rm web
///   moat run --rm --rootfs ./rootfs /bin/sh -c 'echo from a plain directory'
///
/// State lives under --root: images (blobs/, snapshots/, refs.json), containers (containers/<id>/
/// with meta.json, bundle/, ctr.log) and the runtime core's state (runtime/).
///
/// Rootless (run as a user other than root): the store is $XDG_DATA_HOME/moat (default
/// ~/.local/share/moat), the runtime state $XDG_RUNTIME_DIR/moat; containers run in a user
/// namespace mapping your /etc/subuid and /etc/subgid ranges, with the slirp4netns network by
/// default (docs/rootless.md).
#[derive(Parser, Debug)]
#[command(name = "moat", version, verbatim_doc_comment, propagate_version = true)]
struct Cli {
    /// Directory holding images, containers and runtime state [default: /var/lib/moat; rootless:
    /// $XDG_DATA_HOME/moat or ~/.local/share/moat].
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Registry (HOST[:PORT]) to reach over plain HTTP; loopback registries always are. Repeatable.
    /// Also read from `insecureRegistries` in the config file (`$MOAT_CONFIG`, default
    /// /etc/moat/moat.json).
    #[arg(long, global = true, value_name = "HOST")]
    insecure_registry: Vec<String>,
    /// Format of error messages on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Pull an image from a registry (verified blob by blob, unpacked into shared snapshots).
    Pull { reference: String },
    /// Store credentials for a registry (in the auth file moat, podman and docker read).
    Login {
        #[arg(short, long)]
        username: Option<String>,
        /// The password (prefer --password-stdin: command lines are visible to other users).
        #[arg(short, long)]
        password: Option<String>,
        /// Read the password from stdin.
        #[arg(long)]
        password_stdin: bool,
        /// The registry, e.g. registry.example.com or 127.0.0.1:5000.
        registry: String,
    },
    /// Forget the credentials of a registry.
    Logout { registry: String },
    /// List the images in the store.
    Images {
        /// Print only the manifest digests.
        #[arg(short, long)]
        quiet: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove an image's name (blobs are freed by `moat image gc`).
    Rmi {
        /// Remove even if a container uses the image (its rootfs stays mounted).
        #[arg(short, long)]
        force: bool,
        reference: String,
    },
    /// Import, export, inspect and garbage-collect images.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Create and start a container from an image (or a directory with --rootfs).
    ///
    /// The container gets the hardened defaults: Docker's 14 capabilities, the default seccomp
    /// profile, no_new_privs, masked /proc paths, its own pid, ipc, uts, mount, cgroup and network
    /// namespaces (--network none: loopback only). Flags loosen this only where they say so.
    Run(Box<run::RunArgs>),
    /// List containers (running ones; -a for all).
    Ps {
        #[arg(short, long)]
        all: bool,
        /// Print only the short ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Stop containers: SIGTERM, then SIGKILL after --time seconds.
    Stop {
        /// Seconds to wait after SIGTERM.
        #[arg(short, long, default_value_t = 10)]
        time: u64,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Send a signal to a container's init.
    Kill {
        /// Signal name (TERM, SIGTERM) or number.
        #[arg(short, long, default_value = "KILL")]
        signal: String,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Remove containers (their rootfs, log and state); -f stops running ones first.
    Rm {
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Run a command in a running container.
    Exec(Box<lifecycle::ExecArgs>),
    /// Print what moat knows about a container as JSON.
    Inspect { container: String },
    /// Print the output of a detached container.
    Logs {
        /// Keep printing until the container exits.
        #[arg(short, long)]
        follow: bool,
        container: String,
    },
}

#[derive(Subcommand, Debug)]
enum ImageCmd {
    /// Import an OCI layout directory, an oci-archive or a docker-archive tarball.
    Import {
        path: PathBuf,
        /// Name to tag the image with (needed when the archive carries no full name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Export an image as an OCI layout (PATH a directory or ending in /) or an oci-archive.
    Export { reference: String, path: PathBuf },
    /// Print an image's digests, layers and config as JSON.
    Inspect { reference: String },
    /// Remove blobs and snapshots no image or container references.
    Gc,
}

/// The error and its causes on one line, skipping a cause whose text is already there.
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
    out
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let fail = |msg: String| {
        report(cli.log_format, &msg);
        ExitCode::from(125)
    };
    // CVE-2019-5736: run from a sealed copy of ourselves before touching a container's namespaces.
    // A VM container's namespaces are in its guest: no host process of its run enters them.
    let needs_sealed = match &cli.cmd {
        Cmd::Run(r) => r.isolation != "vm",
        Cmd::Exec(_) => true,
        _ => false,
    };
    let sealed = needs_sealed && moat_sys::fd::running_from_sealed_copy();
    // Rootless, the user namespace comes first: the re-execution keeps it, and `run`'s mount
    // namespace lets it make the read-only overlay view of the binary as root does, instead of
    // copying the whole binary into a sealed memfd.
    let entered = rootless::entered_before_reexec();
    let host_uid = entered.unwrap_or_else(|| nix::unistd::geteuid().as_raw());
    let rootless = entered.is_some() || !nix::unistd::geteuid().is_root();
    let paths = match store_paths(&cli, rootless, host_uid) {
        Ok(p) => p,
        Err(e) => return fail(one_line(&anyhow::Error::new(e))),
    };
    if rootless && entered.is_none() {
        if let Err(e) = enter_user_namespace(&cli.cmd, &paths) {
            return fail(one_line(&anyhow::Error::new(e)));
        }
        if needs_sealed && !sealed {
            rootless::mark_entered(host_uid);
        }
    }
    if needs_sealed && !sealed {
        let e = moat_sys::fd::reexec_from_sealed_copy();
        return fail(format!("re-execute from a sealed copy of moat: {e}"));
    }
    match dispatch(&cli, paths, rootless) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            let code = e
                .downcast_ref::<CliError>()
                .map_or(125, CliError::exit_code);
            report(cli.log_format, &one_line(&e));
            ExitCode::from(code)
        }
    }
}

fn report(format: LogFormat, msg: &str) {
    match format {
        LogFormat::Text => eprintln!("error: {msg}"),
        LogFormat::Json => eprintln!(
            "{}",
            serde_json::json!({"level": "error", "msg": msg, "time": moat_container::state::now_rfc3339()})
        ),
    }
}

/// Where the store and the runtime state are: `--root` (default /var/lib/moat, rootless
/// `$XDG_DATA_HOME/moat`) and its `runtime/` (rootless: `$XDG_RUNTIME_DIR/moat`).
fn store_paths(cli: &Cli, rootless: bool, uid: u32) -> error::Result<meta::Paths> {
    if !rootless {
        let root = cli
            .root
            .clone()
            .unwrap_or_else(|| PathBuf::from(moat_image::store::DEFAULT_ROOT));
        return Ok(meta::Paths::new(root));
    }
    let dirs = rootless::dirs(uid)?;
    Ok(meta::Paths::with_runtime(
        cli.root.clone().unwrap_or(dirs.data),
        dirs.runtime,
    ))
}

/// Rootless: the user namespace a command works in (see `rootless`): a new one for commands
/// that write files of other owners, the container's for `exec`, none for those that only read.
fn enter_user_namespace(cmd: &Cmd, paths: &meta::Paths) -> error::Result<()> {
    use rootless::Enter;
    // The init of a running container named alone: its user namespace owns the container's
    // other namespaces and processes (signals to all of them, `exec`).
    let running = |name: &str| -> Option<i32> {
        let id = paths.resolve(name).ok()?;
        match crate::backend::state(&paths.runtime(), &id) {
            Some((moat_container::state::Status::Running, pid)) => Some(pid),
            _ => None,
        }
    };
    let how = match cmd {
        Cmd::Run(_) => Enter::UserAndMount,
        Cmd::Rm { containers, .. }
        | Cmd::Stop { containers, .. }
        | Cmd::Kill { containers, .. } => {
            if let [one] = containers.as_slice() {
                if let Some(pid) = running(one) {
                    return rootless::join(pid, Enter::User);
                }
            }
            Enter::User
        }
        Cmd::Pull { .. } | Cmd::Image(ImageCmd::Import { .. } | ImageCmd::Gc) => Enter::User,
        // A container that is not running: `exec` says so itself.
        Cmd::Exec(a) => {
            return running(&a.container)
                .map_or(Ok(()), |pid| rootless::join(pid, Enter::UserAndMount))
        }
        _ => return Ok(()),
    };
    rootless::enter(how, &paths.root)
}

fn dispatch(cli: &Cli, paths: meta::Paths, rootless: bool) -> anyhow::Result<i32> {
    let store = moat_image::Store::open(&paths.root).map_err(CliError::image(format!(
        "open the store at {}",
        paths.root.display()
    )))?;
    let ctx = Ctx {
        paths,
        rootless,
        store,
        reg: RegistryOptions {
            insecure: cli
                .insecure_registry
                .iter()
                .cloned()
                .chain(config_insecure_registries()?)
                .collect(),
        },
    };
    let each = |names: &[String], f: &dyn Fn(&str) -> error::Result<()>| -> anyhow::Result<()> {
        let mut failed = None;
        for n in names {
            match f(n) {
                Ok(()) => println!("{n}"),
                Err(e) => {
                    report(cli.log_format, &one_line(&anyhow::Error::new(e)));
                    failed = Some(n.clone());
                }
            }
        }
        match failed {
            Some(n) => Err(anyhow::anyhow!(
                "not every container was handled (last failure: {n})"
            )),
            None => Ok(()),
        }
    };
    match &cli.cmd {
        Cmd::Pull { reference } => {
            images::pull(&ctx.store, reference, &ctx.reg)?;
        }
        Cmd::Login {
            username,
            password,
            password_stdin,
            registry,
        } => login::login(
            registry,
            username.as_deref(),
            password.as_deref(),
            *password_stdin,
        )?,
        Cmd::Logout { registry } => login::logout(registry)?,
        Cmd::Images { quiet, json } => images::list(&ctx.store, *quiet, *json)?,
        Cmd::Rmi { force, reference } => images::remove(&ctx.store, &ctx.paths, reference, *force)?,
        Cmd::Image(ImageCmd::Import { path, name }) => {
            images::import(&ctx.store, path, name.as_deref())?
        }
        Cmd::Image(ImageCmd::Export { reference, path }) => {
            images::export(&ctx.store, reference, path)?
        }
        Cmd::Image(ImageCmd::Inspect { reference }) => images::inspect(&ctx.store, reference)?,
        Cmd::Image(ImageCmd::Gc) => images::gc(&ctx.store)?,
        Cmd::Run(a) => return Ok(run::run(&ctx, a)?),
        Cmd::Ps { all, quiet } => lifecycle::ps(&ctx, *all, *quiet)?,
        Cmd::Stop { time, containers } => each(containers, &|n| lifecycle::stop(&ctx, n, *time))?,
        Cmd::Kill { signal, containers } => {
            each(containers, &|n| lifecycle::kill(&ctx, n, signal))?
        }
        Cmd::Rm { force, containers } => each(containers, &|n| lifecycle::rm(&ctx, n, *force))?,
        Cmd::Exec(a) => return Ok(lifecycle::exec(&ctx, a)?),
        Cmd::Inspect { container } => lifecycle::inspect(&ctx, container)?,
        Cmd::Logs { follow, container } => lifecycle::logs(&ctx, container, *follow)?,
    }
    Ok(0)
}

/// `insecureRegistries` of moat's config file (`$MOAT_CONFIG`, default /etc/moat/moat.json); a
/// missing file is no error, an unreadable or malformed one is.
fn config_insecure_registries() -> anyhow::Result<Vec<String>> {
    let path = std::env::var_os("MOAT_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/moat/moat.json"));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => anyhow::bail!("read config {}: {e}", path.display()),
    };
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("parse config {}: {e}", path.display()))?;
    Ok(v["insecureRegistries"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}
