//! The container commands after `run`: `ps`, `stop`, `kill`, `rm`, `exec`, `inspect`, `logs`.
//! Each resolves a name or id prefix through [`crate::meta`] and calls the runtime core; the
//! status shown is derived from the core's state (a live init) and the exit status the waiter
//! recorded, never stored as a guess.

use std::io::{Read, Seek, Write};
use std::time::{Duration, Instant};

use moat_container::state::Status;

use crate::error::{CliError, Result};
use crate::meta::{Meta, RootfsSource};
use crate::run::Ctx;

/// The status of a container: the core's when it has state, else what the waiter recorded.
pub fn status(ctx: &Ctx, m: &Meta) -> (String, Option<i32>) {
    if let Some((s, pid)) = crate::backend::state(&ctx.paths.runtime(), &m.id) {
        if s != Status::Stopped {
            return (s.to_string(), Some(pid));
        }
    }
    match m.exit_code {
        Some(c) => (format!("exited ({c})"), None),
        None => ("exited".into(), None),
    }
}

fn is_live(s: &str) -> bool {
    matches!(s, "running" | "created" | "paused" | "creating")
}

fn image_name(m: &Meta) -> String {
    match &m.rootfs {
        RootfsSource::Image { name, .. } => name
            .strip_prefix("docker.io/library/")
            .unwrap_or(name)
            .to_owned(),
        RootfsSource::Dir { path } => format!("(rootfs {})", path.display()),
    }
}

/// `moat ps`.
pub fn ps(ctx: &Ctx, all: bool, quiet: bool) -> Result<()> {
    let rows: Vec<(Meta, String)> = ctx
        .paths
        .list()?
        .into_iter()
        .map(|m| {
            let s = status(ctx, &m).0;
            (m, s)
        })
        .filter(|(_, s)| all || is_live(s))
        .collect();
    if quiet {
        for (m, _) in &rows {
            println!("{}", &m.id[..12]);
        }
        return Ok(());
    }
    println!(
        "{:<14} {:<28} {:<24} {:<32} {:<14} {:<24} NAMES",
        "CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS"
    );
    for (m, s) in rows {
        let mut cmd = m.command.join(" ");
        if cmd.chars().count() > 22 {
            cmd = cmd.chars().take(21).collect::<String>() + "…";
        }
        let ports: Vec<String> = m
            .ports
            .iter()
            .map(|p| {
                format!(
                    "{}:{}->{}/{}",
                    p.host_ip, p.host_port, p.container_port, p.protocol
                )
            })
            .collect();
        println!(
            "{:<14} {:<28} {:<24} {:<32} {:<14} {:<24} {}",
            &m.id[..12],
            image_name(&m),
            format!("\"{cmd}\""),
            m.created.split('.').next().unwrap_or(&m.created),
            s,
            ports.join(","),
            m.name
        );
    }
    Ok(())
}

/// `moat kill`.
pub fn kill(ctx: &Ctx, name: &str, signal: &str) -> Result<()> {
    let id = ctx.paths.resolve(name)?;
    let sig = moat_container::kill::parse_signal(signal)
        .ok_or_else(|| CliError::Usage(format!("kill {name}: unknown signal {signal:?}")))?;
    crate::backend::kill(&ctx.paths.runtime(), &id, name, sig, false)
}

fn wait_dead(rt: &moat_container::Store, id: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while crate::backend::state(rt, id).is_some_and(|(s, _)| s != Status::Stopped) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// `moat stop`: SIGTERM, then SIGKILL to every process after `timeout` seconds.
pub fn stop(ctx: &Ctx, name: &str, timeout: u64) -> Result<()> {
    let id = ctx.paths.resolve(name)?;
    let rt = ctx.paths.runtime();
    if crate::backend::state(&rt, &id).is_none_or(|(s, _)| s == Status::Stopped) {
        return Ok(()); // not running
    }
    let _ = crate::backend::kill(&rt, &id, name, libc::SIGTERM, false);
    if !wait_dead(&rt, &id, Duration::from_secs(timeout)) {
        let _ = crate::backend::kill(&rt, &id, name, libc::SIGKILL, true);
        if !wait_dead(&rt, &id, Duration::from_secs(10)) {
            return Err(CliError::BadStatus {
                id: name.into(),
                action: "stop",
                status: "still running 10 s after SIGKILL".into(),
            });
        }
    }
    // Give the waiter (`moat run` or the monitor of -d) a moment to record the exit.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && ctx.paths.load(&id).is_ok_and(|m| m.exit_code.is_none()) {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// `moat rm`.
pub fn rm(ctx: &Ctx, name: &str, force: bool) -> Result<()> {
    let id = ctx.paths.resolve(name)?;
    let m = ctx.paths.load(&id)?;
    let (s, _) = status(ctx, &m);
    if is_live(&s) && !force {
        return Err(CliError::BadStatus {
            id: name.into(),
            action: "rm",
            status: format!("{s} (stop it first or use rm -f)"),
        });
    }
    crate::backend::delete(&ctx.paths.runtime(), &id, name)?;
    // The container's `moat run` or monitor records the exit now that it has ended; let it
    // finish before the directory goes (it would write into it otherwise).
    crate::meta::wait_finished(&ctx.paths, &id, Duration::from_secs(30));
    // The container's monitor may be tearing the network down at this moment: `release`
    // serializes the two and runs CNI DEL once.
    crate::cni::release(&ctx.paths, &id)?;
    // Rootless, the overlay lives in the mount namespace of the `moat run` that made it (gone
    // with its last process, waited for above); the host's has nothing to unmount.
    if matches!(m.rootfs, RootfsSource::Image { .. }) && !ctx.rootless {
        if let Ok(r) = moat_image::snapshot::rootfs_of(&ctx.store, &id) {
            r.unmount()
                .map_err(CliError::image(format!("unmount the rootfs of {name}")))?;
        }
    }
    let dir = ctx.paths.container_dir(&id);
    match std::fs::remove_dir_all(&dir) {
        // Gone already: a `moat run` killed midway leaves a monitor that removes it on its
        // way out, possibly now.
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(CliError::io("remove", &dir)(e));
        }
        _ => {}
    }
    ctx.paths.release_name(&m.name, &id);
    Ok(())
}

/// `moat exec`'s flags.
#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    /// Keep stdin open (without it the process's stdin is /dev/null).
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a terminal for the process (copied to and from this terminal, raw mode).
    #[arg(short, long)]
    pub tty: bool,
    /// Set an environment variable; may be repeated.
    #[arg(short, long, value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// User as UID[:GID] (numbers).
    #[arg(short, long)]
    pub user: Option<String>,
    /// Working directory inside the container.
    #[arg(short, long)]
    pub workdir: Option<std::path::PathBuf>,
    /// Container name, id or id prefix.
    pub container: String,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub args: Vec<String>,
}

/// `moat exec`: returns the process's exit status.
pub fn exec(ctx: &Ctx, a: &ExecArgs) -> Result<i32> {
    let id = ctx.paths.resolve(&a.container)?;
    let rt = ctx.paths.runtime();
    let what = format!("exec in container {}", a.container);
    let vm = crate::backend::is_vm(&rt, &id);
    let mut p = if vm {
        moat_runtime::vm_backend::base_process(&rt, &id).map_err(CliError::vm(what.clone()))?
    } else {
        moat_container::exec::base_process(&rt, &id).map_err(CliError::container(what.clone()))?
    };
    p.set_args(Some(a.args.clone()));
    p.set_terminal(Some(a.tty));
    p.set_console_size(None);
    if let Some(w) = &a.workdir {
        p.set_cwd(w.clone());
    }
    if !a.env.is_empty() {
        let env = moat_image::spec::merge_env([&p.env().clone().unwrap_or_default(), &a.env]);
        p.set_env(Some(env));
    }
    if let Some(u) = &a.user {
        let bad = || CliError::Usage(format!("exec --user {u:?}: expected UID[:GID] numbers"));
        let (uid, gid) = match u.split_once(':') {
            Some((u, g)) => (
                u.parse().map_err(|_| bad())?,
                Some(g.parse().map_err(|_| bad())?),
            ),
            None => (u.parse().map_err(|_| bad())?, None),
        };
        p.user_mut().set_uid(uid);
        if let Some(g) = gid {
            p.user_mut().set_gid(g);
        }
    }
    if !a.interactive {
        let null = std::fs::File::open("/dev/null").map_err(CliError::io("open", "/dev/null"))?;
        nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 0)
            .map_err(CliError::sys("dup2 /dev/null onto stdin"))?;
    }
    if vm {
        // The agent forwards our stdin (/dev/null without -i), output and exit status; with -t
        // the guest's pty is shown on our terminal (raw mode, its size followed).
        // (Its errors name the step and the id already.)
        return moat_runtime::vm_backend::exec(&rt, &id, &p, false, None, None)
            .map_err(CliError::vm(format!("moat exec {}", a.container)));
    }
    let console = if a.tty {
        Some(crate::tty::ConsoleSocket::listen(
            &ctx.paths.container_dir(&id),
            &ctx.paths.short_socket_dir(),
        )?)
    } else {
        None
    };
    let opts = moat_container::exec::ExecOptions {
        id,
        console_socket: console.as_ref().map(|c| c.path().to_path_buf()),
        ..Default::default()
    };
    let pid = moat_container::exec::exec(&rt, &opts, p).map_err(CliError::container(what))?;
    let _attached = console.map(|c| c.attach()).transpose()?;
    crate::run::wait_forwarding(pid)
}

/// `moat inspect`: what moat knows about a container, as JSON.
pub fn inspect(ctx: &Ctx, name: &str) -> Result<()> {
    let id = ctx.paths.resolve(name)?;
    let m = ctx.paths.load(&id)?;
    let (s, pid) = status(ctx, &m);
    let spec: serde_json::Value = std::fs::read(ctx.paths.bundle(&id).join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let out = serde_json::json!({
        "Id": m.id,
        "Name": m.name,
        "Created": m.created,
        "Image": image_name(&m),
        "Rootfs": m.rootfs,
        "Command": m.command,
        "State": {
            "Status": s,
            "Running": is_live(&s),
            "Pid": pid.unwrap_or(0),
            "ExitCode": m.exit_code,
            "FinishedAt": m.finished,
        },
        "AutoRemove": m.auto_remove,
        "Network": { "Mode": m.network, "IPAddress": m.ip, "Ports": m.ports },
        "LogPath": m.detached.then(|| ctx.paths.log(&id)),
        "Bundle": ctx.paths.bundle(&id),
        "Spec": spec,
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    Ok(())
}

/// `moat logs`: print the log of a detached container; with `follow`, keep printing until the
/// container has exited.
pub fn logs(ctx: &Ctx, name: &str, follow: bool) -> Result<()> {
    let id = ctx.paths.resolve(name)?;
    let m = ctx.paths.load(&id)?;
    let path = ctx.paths.log(&id);
    if !m.detached {
        return Err(CliError::Usage(format!(
            "logs {name}: the container ran in the foreground; only -d containers have a log"
        )));
    }
    let mut f = std::fs::File::open(&path).map_err(CliError::io("open log", &path))?;
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = f.read(&mut buf).map_err(CliError::io("read log", &path))?;
        if n > 0 {
            out.write_all(&buf[..n])
                .map_err(CliError::io("write", "stdout"))?;
            continue;
        }
        let _ = out.flush();
        if !follow || ctx.paths.load(&id).is_err() || !is_live(&status(ctx, &m).0) {
            // One last read: output written just before the exit.
            let pos = f.stream_position().unwrap_or(0);
            if std::fs::metadata(&path).map(|md| md.len()).unwrap_or(0) > pos {
                continue;
            }
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
