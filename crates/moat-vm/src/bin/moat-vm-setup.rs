//! `moat-vm-setup`: fetch the guest kernel into the VM cache ($MOAT_VM_DIR or /var/lib/moat/vm)
//! with apt-get download, and print where it is. Run once as root on a Debian host.

fn main() -> std::process::ExitCode {
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
