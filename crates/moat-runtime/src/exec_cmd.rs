//! `moat-runtime exec`: runc's flags turned into an OCI process, based on the container's own
//! process (so it inherits capabilities, rlimits and no_new_privs unless told otherwise), run by
//! the namespaces backend or, for a VM container, by its guest agent ([`exec_vm`]).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use moat_container::Store;
use moat_runtime::tty::{ConsolePair, Relay};
use oci_spec::runtime::Process;

use crate::log::Logger;

#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    /// Path to a process.json (an OCI process) to run instead of ARGS.
    #[arg(short, long, value_name = "FILE")]
    pub process: Option<PathBuf>,
    /// Allocate a pseudo-terminal (relayed to our stdin/stdout without --console-socket).
    #[arg(short, long)]
    pub tty: bool,
    /// Unix socket that receives the pty master.
    #[arg(long, value_name = "SOCK")]
    pub console_socket: Option<PathBuf>,
    /// Return once the process has started.
    #[arg(short, long)]
    pub detach: bool,
    /// Write the new process's pid to this file.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Working directory inside the container.
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    /// Set an environment variable (KEY=VALUE); may be repeated.
    #[arg(short, long)]
    pub env: Vec<String>,
    /// User as UID[:GID].
    #[arg(short, long)]
    pub user: Option<String>,
    /// Additional group ids; may be repeated.
    #[arg(short = 'g', long)]
    pub additional_gids: Vec<u32>,
    /// Add a capability to the process (e.g. CAP_NET_ADMIN); may be repeated.
    #[arg(short, long)]
    pub cap: Vec<String>,
    /// Set no_new_privs for the process.
    #[arg(long)]
    pub no_new_privs: bool,
    /// AppArmor profile for the process (refused with a clear error where AppArmor is off).
    #[arg(long)]
    pub apparmor: Option<String>,
    /// SELinux process label (ignored when SELinux is disabled, as runc does).
    #[arg(long)]
    pub process_label: Option<String>,
    /// Exec even if the container is paused (the process runs once it is resumed).
    #[arg(long)]
    pub ignore_paused: bool,
    /// Run in a sub-cgroup of the container: PATH, or CONTROLLER[,CONTROLLER]:PATH on cgroup
    /// v1; may be repeated. The sub-cgroup must exist.
    #[arg(long, value_name = "PATH|CTRL:PATH")]
    pub cgroup: Vec<String>,
    /// Pass N extra file descriptors (3..3+N).
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    pub id: String,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

fn build_process(a: &ExecArgs, base: impl FnOnce() -> Result<Process>) -> Result<Process> {
    if let Some(p) = &a.process {
        let data = std::fs::read(p).with_context(|| format!("read process {}", p.display()))?;
        let mut v: serde_json::Value = serde_json::from_slice(&data)
            .with_context(|| format!("parse process {}", p.display()))?;
        moat_container::sched::spec_flag_names(&mut v);
        return serde_path_to_error::deserialize(v).map_err(|e| {
            anyhow::anyhow!("parse process {}: {}: {}", p.display(), e.path(), e.inner())
        });
    }
    if a.args.is_empty() {
        bail!("exec: give the command to run after the container id, or --process FILE");
    }
    let mut p = base()?;
    p.set_args(Some(a.args.clone()));
    p.set_terminal(Some(a.tty));
    p.set_console_size(None);
    if let Some(cwd) = &a.cwd {
        p.set_cwd(cwd.clone());
    }
    if !a.env.is_empty() {
        let mut env = p.env().clone().unwrap_or_default();
        for kv in &a.env {
            let key = kv.split_once('=').map(|(k, _)| k).unwrap_or(kv);
            env.retain(|e| e.split_once('=').map(|(k, _)| k) != Some(key));
            env.push(kv.clone());
        }
        p.set_env(Some(env));
    }
    if let Some(u) = &a.user {
        let (uid, gid) = match u.split_once(':') {
            Some((u, g)) => (u.parse::<u32>()?, Some(g.parse::<u32>()?)),
            None => (
                u.parse::<u32>().context("--user takes numeric UID[:GID]")?,
                None,
            ),
        };
        let user = p.user_mut();
        user.set_uid(uid);
        if let Some(g) = gid {
            user.set_gid(g);
        }
    }
    if !a.additional_gids.is_empty() {
        p.user_mut()
            .set_additional_gids(Some(a.additional_gids.clone()));
    }
    // As runc 1.1 (since the fix of CVE-2022-29162): added capabilities go into the bounding,
    // effective, permitted and ambient sets, never the inheritable one; an ambient capability
    // that is not inheritable is then skipped, as runc skips it.
    if !a.cap.is_empty() {
        let extra: oci_spec::runtime::Capabilities =
            serde_json::from_value(serde_json::json!(a.cap))
                .context("--cap: unknown capability")?;
        let mut caps = p.capabilities().clone().unwrap_or_default();
        let add = |s: &Option<oci_spec::runtime::Capabilities>| -> Option<oci_spec::runtime::Capabilities> {
            let mut set = s.clone().unwrap_or_default();
            set.extend(extra.iter().cloned());
            Some(set)
        };
        caps.set_bounding(add(caps.bounding()));
        caps.set_effective(add(caps.effective()));
        caps.set_permitted(add(caps.permitted()));
        caps.set_ambient(add(caps.ambient()));
        p.set_capabilities(Some(caps));
    }
    if a.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    if let Some(profile) = &a.apparmor {
        p.set_apparmor_profile(Some(profile.clone()));
    }
    Ok(p)
}

/// `exec` in a VM container: the same process, run in the guest (a terminal is the guest's pty,
/// relayed to ours or to a host pty whose master goes to --console-socket); passed fds are
/// refused, and a pid file unless the process has a host relay (a detached terminal).
pub fn exec_vm(store: &Store, a: &ExecArgs) -> Result<ExitCode> {
    use moat_runtime::vm_backend;
    let id = &a.id;
    if a.preserve_fds > 0 {
        bail!("exec in VM container {id}: --preserve-fds is not supported (no host fds reach the guest)");
    }
    let process = build_process(a, || Ok(vm_backend::base_process(store, id)?))
        .with_context(|| format!("exec in container {id}"))?;
    if process
        .apparmor_profile()
        .as_ref()
        .is_some_and(|p| !p.is_empty())
    {
        bail!("exec in VM container {id}: AppArmor profiles are not supported");
    }
    let code = vm_backend::exec(
        store,
        id,
        &process,
        a.detach,
        a.console_socket.as_deref(),
        a.pid_file.as_deref(),
    )
    .with_context(|| format!("exec in container {id}"))?;
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

pub fn exec(store: &Store, a: &ExecArgs, log: &mut Logger) -> Result<ExitCode> {
    let process = build_process(a, || Ok(moat_container::exec::base_process(store, &a.id)?))
        .with_context(|| format!("exec in container {}", a.id))?;
    if process
        .apparmor_profile()
        .as_ref()
        .is_some_and(|p| !p.is_empty())
    {
        bail!(
            "exec in container {}: AppArmor profiles are not supported by this moat build yet",
            a.id
        );
    }
    let terminal = process.terminal().unwrap_or(false) && a.console_socket.is_none();
    if a.detach {
        crate::run::check_detached_terminal(terminal, false)?;
    }
    let pair = terminal.then(ConsolePair::new).transpose()?;
    let opts = moat_container::exec::ExecOptions {
        id: a.id.clone(),
        console_socket: a.console_socket.clone(),
        pid_file: a.pid_file.clone(),
        preserve_fds: a.preserve_fds,
        console: pair.as_ref().map(|p| p.theirs.clone()),
        ignore_paused: a.ignore_paused,
        cgroups: a.cgroup.clone(),
    };
    log.debug(&format!("exec in container {}: {:?}", a.id, process.args()));
    let pid = moat_container::exec::exec(store, &opts, process)
        .with_context(|| format!("exec in container {}", a.id))?;
    let relay = match pair {
        Some(p) => {
            moat_runtime::block_forwarded().context("block signals")?;
            Some(Relay::start(p.receive_master()?)?)
        }
        None => None,
    };
    if a.detach {
        return Ok(ExitCode::SUCCESS);
    }
    let code = crate::run::wait_forwarding(pid, log, relay.as_ref());
    drop(relay);
    let code = code?;
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}
