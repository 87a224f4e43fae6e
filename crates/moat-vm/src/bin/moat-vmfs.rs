//! `moat-vmfs SOCKET DIR`: serves a VM's shared directory to its guest as FUSE over a serial
//! port. moat starts one per VM resumed from a template that shares a directory
//! ([`moat_vm::fuse_share`]); it is not run by hand.

fn main() {
    moat_vm::fuse_share::server_main()
}
