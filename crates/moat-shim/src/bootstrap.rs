//! The shim's start-up handshake with containerd (the `start` action), kept in one place because
//! it changed over containerd's history. containerd 1.6 (Debian 12) reads a plain socket address
//! (`unix:///run/containerd/s/<hash>`) from the shim's stdout; later versions still accept it.
//! (containerd-shim's own handler answers with a JSON document that 1.6 cannot parse.)
//!
//! One shim per pod: a container that carries the CRI annotations of an existing sandbox is
//! answered with the sandbox shim's address instead of a new shim.

use std::io::Read;
use std::process::{Command, Stdio};

/// Handle `start`: print the address of the shim that will serve this container.
pub fn start(args: &[String]) -> Result<String, String> {
    let flags = containerd_shim::parse(&args[1..]).map_err(|e| format!("parse flags: {e}"))?;
    if flags.namespace.is_empty() || flags.id.is_empty() {
        return Err("start: -namespace and -id are required".into());
    }
    let grouping = crate::service::pod_grouping(&flags.id);
    let address = containerd_shim::socket_address(&flags.address, &flags.namespace, &grouping);
    let path = address.strip_prefix("unix://").unwrap_or(&address);
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Ok(address);
    }
    let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .args([
            "-namespace",
            &flags.namespace,
            "-id",
            &flags.id,
            "-address",
            &flags.address,
            "-socket",
            &address,
        ]);
    if flags.debug {
        cmd.arg("-debug");
    }
    // Run as containerd-shim-moat-vm-v2 (runtime io.containerd.moat-vm.v2): every pod of this
    // shim runs in a VM. The serving shim runs from `current_exe` (the link resolved), so it is
    // told by the environment.
    let vm_name = args.first().is_some_and(|a0| {
        std::path::Path::new(a0)
            .file_name()
            .is_some_and(|n| n == crate::vm_pod::VM_SHIM_NAME)
    });
    if vm_name {
        cmd.env(crate::vm_pod::VM_MODE_ENV, "vm");
    } else {
        cmd.env_remove(crate::vm_pod::VM_MODE_ENV);
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
    Ok(address)
}
