//! `moat-agent`: PID 1 of a moat guest VM. It boots the guest (kernel filesystems, modules, a
//! tmpfs root), finds the virtio-serial ports the host named (`io.moat.agent.0`, and the others
//! announced by `moat.agent_ports=N`), and serves the host's requests by calling the namespaces
//! backend (`moat-container`) inside the VM: the same container code as on the host, not a second
//! copy. When the sandbox ends it powers the VM off. Run by the kernel as `/sbin/modprobe`, it
//! loads a module a container asked for instead ([`modprobe`]).
//!
//! What it must never do: crash on a request (a malformed one gets an error reply), write its log
//! to the stdio it lends to containers, or keep running once the host asked it to stop.
#![forbid(unsafe_code)]

mod boot;
mod conn;
mod error;
mod fuse_relay;
mod log;
mod modprobe;
mod net;
mod pod;
mod restore;
mod serve;
mod shared;
mod stdin;
mod stdio;
mod tty;

fn main() {
    // The kernel runs the agent as /sbin/modprobe to load a module a container asks for.
    if modprobe::called_as() {
        std::process::exit(modprobe::main());
    }
    if std::process::id() != 1 {
        eprintln!("moat-agent: runs only as PID 1 of a moat guest VM (the host boots it)");
        std::process::exit(2);
    }
    std::panic::set_hook(Box::new(|info| {
        log::error(&format!("panic: {info}"));
        boot::power_off();
    }));
    let ports = match boot::boot() {
        Ok(p) => p,
        Err(e) => {
            log::error(&format!("boot: {e}"));
            boot::power_off();
        }
    };
    log::info(&format!("serving on {ports:?}"));
    if let Err(e) = serve::serve(&ports) {
        log::error(&format!("serve {ports:?}: {e}"));
    }
    boot::power_off();
}
