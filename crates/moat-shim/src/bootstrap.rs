//! The shim's start-up handshake with containerd (the `start` action), kept in one place because
//! it changed over containerd's history. containerd 1.6 (Debian 12) reads a plain socket address
//! (`unix:///run/containerd/s/<hash>`) from the shim's stdout; later versions still accept it.
//! (containerd-shim's own handler answers with a JSON document that 1.6 cannot parse.)
//!
//! One shim per pod: a container that carries the CRI annotations of an existing sandbox is
//! answered with the sandbox shim's address instead of a new shim. With the shared shim
//! (`shared`), every pod but VM pods is answered with the one shared shim's address.

use std::io::Read;
use std::process::{Command, Stdio};

/// Handle `start`: print the address of the shim that will serve this container, and record it
/// in the bundle (the working directory) as `address`: containerd reads that file when it
/// restarts, to reconnect to the task's shim (without it, a restarted containerd finds no shim
/// and cleans the task up).
pub fn start(args: &[String]) -> Result<String, String> {
    let address = serving_address(args)?;
    containerd_shim::util::write_address(&address)
        .map_err(|e| format!("write the shim address to the bundle's address file: {e}"))?;
    Ok(address)
}

/// The address of the shim that will serve this container, spawned if needed.
fn serving_address(args: &[String]) -> Result<String, String> {
    let flags = containerd_shim::parse(&args[1..]).map_err(|e| format!("parse flags: {e}"))?;
    if flags.namespace.is_empty() || flags.id.is_empty() {
        return Err("start: -namespace and -id are required".into());
    }
    let arg0 = args.first().map(String::as_str).unwrap_or("");
    // Run as containerd-shim-moat-vm-v2 (runtime io.containerd.moat-vm.v2): every pod of this
    // shim runs in a VM.
    let vm_name = std::path::Path::new(arg0)
        .file_name()
        .is_some_and(|n| n == crate::vm_pod::VM_SHIM_NAME);
    let grouping = pod_grouping(&flags.id);
    let address = containerd_shim::socket_address(&flags.address, &flags.namespace, &grouping);
    let path = address.strip_prefix("unix://").unwrap_or(&address);
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Ok(address);
    }
    // The shared shim, unless the pod runs in a VM (a VM pod keeps a shim of its own; its
    // containers found it above).
    // (The bundle is read for the VM annotation only when the shared shim is asked for.)
    let shared = !vm_name
        && crate::shared::wanted(arg0)
        && !(grouping == flags.id && crate::vm_pod::guest::wants_vm(std::path::Path::new(".")));
    if shared {
        let paths = crate::shared::Paths::new(&flags.address, &flags.namespace);
        return crate::shared::start(&paths, &flags.id, |address| {
            spawn(&flags, address, &[(crate::shared::SERVE_ENV, "1")])
        });
    }
    let env: &[(&str, &str)] = if vm_name {
        // The serving shim runs from `current_exe` (the link resolved): told by the environment.
        &[(crate::vm_pod::VM_MODE_ENV, "vm")]
    } else {
        &[]
    };
    spawn(&flags, &address, env)?;
    Ok(address)
}

/// The arguments that make a shim serve containerd's task API (of `flags`) on `socket`.
pub(crate) fn serve_args(flags: &containerd_shim::Flags, socket: &str) -> Vec<String> {
    let mut args: Vec<String> = [
        "-namespace",
        &flags.namespace,
        "-id",
        &flags.id,
        "-address",
        &flags.address,
        "-socket",
        socket,
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    if flags.debug {
        args.push("-debug".into());
    }
    args
}

/// Spawn the serving shim on `address` with `env` (the mode variables not in it are removed);
/// return once it listens.
fn spawn(
    flags: &containerd_shim::Flags,
    address: &str,
    env: &[(&str, &str)],
) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .args(serve_args(flags, address));
    cmd.env_remove(crate::vm_pod::VM_MODE_ENV)
        .env_remove(crate::shared::SERVE_ENV);
    for (k, v) in env {
        cmd.env(k, v);
    }
    // The serving shim must not die with containerd's `start` process group.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().map_err(|e| format!("spawn the shim: {e}"))?;
    // The serving shim closes its stdout once its socket listens.
    let mut sink = Vec::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_end(&mut sink);
    }
    if let Ok(Some(status)) = child.try_wait() {
        if !status.success() {
            return Err(format!("the shim exited during start-up: {status}"));
        }
    }
    Ok(())
}

/// The CRI sandbox a container belongs to (from its bundle's annotations, the working
/// directory), else its own id.
pub fn pod_grouping(id: &str) -> String {
    let Ok(data) = std::fs::read("config.json") else {
        return id.into();
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&data) else {
        return id.into();
    };
    let ann = &v["annotations"];
    match (
        ann["io.kubernetes.cri.container-type"].as_str(),
        ann["io.kubernetes.cri.sandbox-id"].as_str(),
    ) {
        (Some("container"), Some(sandbox)) if !sandbox.is_empty() => sandbox.into(),
        _ => id.into(),
    }
}
