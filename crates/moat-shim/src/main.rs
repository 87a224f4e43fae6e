//! `containerd-shim-moat-v2`: the containerd shim v2 of moat. containerd starts one per pod (the
//! containers of a CRI sandbox share the sandbox's shim), or, as `containerd-shim-moat-shared-v2`,
//! one for every pod of the node (`shared`); the shim serves the Task API over ttrpc and drives
//! containers through the runtime core (`moat-container`) as a library.
//!
//! Forking a multi-threaded process and then running arbitrary code in the child is unsound, and
//! the ttrpc server is multi-threaded; so before any thread starts, the shim forks a single-threaded
//! *zygote* (see `zygote`), which forks a short-lived worker per create/exec that calls the core
//! exactly as `moat-runtime create` does. The container's init is then reparented to the shim,
//! a child subreaper, which reaps it and reports its exit.
//!
//! The shared shim is two processes: a keeper, which holds the connections containerd makes and
//! survives the crash of the worker behind it, which serves them (see `keeper`).

mod bootstrap;
mod events;
mod io;
mod keeper;
mod metrics;
mod router;
mod serve;
mod service;
mod shared;
mod vm_pod;
mod zygote;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let action = args.last().map(String::as_str).unwrap_or("");
    let serving = !matches!(action, "start" | "delete")
        && !args
            .iter()
            .any(|a| a == "-info" || a == "-v" || a == "--version");
    if action == "start" {
        match bootstrap::start(&args) {
            Ok(address) => {
                print!("{address}");
                std::process::exit(0);
            }
            Err(e) => {
                eprintln!("error: containerd-shim-moat-v2 start: {e}");
                std::process::exit(1);
            }
        }
    }
    if serving {
        // CVE-2019-5736: container inits are forks of this process; run from a sealed copy.
        if !moat_sys::fd::running_from_sealed_copy() {
            let e = moat_sys::fd::reexec_from_sealed_copy();
            eprintln!("error: containerd-shim-moat-v2: re-execute from a sealed copy: {e}");
            std::process::exit(1);
        }
        // The shared shim: `start` spawned its keeper, which spawns the worker (`keeper`).
        if shared::asked_to_serve() && keeper::keeper_pid().is_none() {
            if let Err(e) = keeper::run(&args) {
                log::error!("keeper: {e}");
                eprintln!("error: containerd-shim-moat-v2: keeper: {e}");
                std::process::exit(1);
            }
            return;
        }
        if let Err(e) = zygote::start_global() {
            eprintln!("error: containerd-shim-moat-v2: start the zygote: {e}");
            std::process::exit(1);
        }
        if let Err(e) = serve::serve(&args) {
            eprintln!("error: containerd-shim-moat-v2: {e}");
            std::process::exit(1);
        }
        return;
    }
    if action == "delete" {
        // After a crash of the shared shim: its socket and lock files.
        if let Ok(flags) = containerd_shim::parse(&args[1..]) {
            shared::remove_stale_files(&flags.address, &flags.namespace);
        }
    }
    containerd_shim::run::<service::Service>("io.containerd.moat.v2", None);
}
