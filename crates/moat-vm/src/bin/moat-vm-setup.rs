//! `moat-vm-setup`: fetch the guest kernel into the VM cache ($MOAT_VM_DIR or /var/lib/moat/vm)
//! with apt-get download, and print where it is. Run once as root on a Debian host.

const HELP: &str = "\
moat-vm-setup: prepare this host for VM containers (moat run --isolation vm, the io.moat.isolation=vm
annotation of moat-runtime, the moat-vm RuntimeClass of the shim).

Fetches Debian's cloud kernel (linux-image-cloud-amd64, with apt-get download; run apt-get update
first on a new machine) into the VM cache, $MOAT_VM_DIR or /var/lib/moat/vm, and prints where it is.
Without this step the first VM container fetches it itself. The guest agent needs no setup: the
moat-agent that `cargo build --release` puts next to moat is used (or $MOAT_AGENT_BIN).

usage: moat-vm-setup [-h|--help]";

fn main() -> std::process::ExitCode {
    if let Some(arg) = std::env::args().nth(1) {
        if arg == "-h" || arg == "--help" {
            println!("{HELP}");
            return std::process::ExitCode::SUCCESS;
        }
        eprintln!("error: unexpected argument {arg:?}; see moat-vm-setup --help");
        return std::process::ExitCode::from(2);
    }
    let cache = moat_vm::assets::cache_dir();
    match moat_vm::assets::ensure_kernel(&cache) {
        Ok(k) => {
            println!("guest kernel {} at {}", k.release, k.vmlinuz.display());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
