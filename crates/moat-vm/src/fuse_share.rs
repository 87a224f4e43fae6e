//! The shared directory of a VM resumed from a template, served as FUSE over a serial port.
//!
//! A clone cannot have virtiofs: QEMU 7.2 cannot migrate a vhost-user-fs device, and virtiofsd
//! maps guest RAM shared, which a copy-on-write clone's is not. So every template has one more
//! virtio-serial port ([`moat_agent_proto::FS_PORT_NAME`]); in the guest the agent mounts FUSE and
//! relays `/dev/fuse` to that port, and on the host `moat-vmfs` (this module's [`server_main`],
//! a binary of this crate) answers the requests from the share with fuse-backend-rs's
//! passthrough filesystem (the one Nydus and Dragonball ship; writing a FUSE server by hand would
//! repeat its ~40 operations).
//!
//! The share is the one [`crate::virtiofs`] prepares (a private mount namespace holding a
//! read-only tmpfs with each bind at its place), and `moat-vmfs` sandboxes itself the way
//! virtiofsd does: its serving process is forked into new pid, mount and network namespaces,
//! mounts its own `/proc` (for the passthrough's `/proc/self/fd`), pivots into the share, drops
//! every capability but the file-owner ones the passthrough needs, sets no_new_privs and puts a
//! seccomp allow-list ([`SYSCALLS`]) in force. Binds
//! added later ([`crate::virtiofs::add_binds`]) enter that process's mount namespace exactly as
//! they enter virtiofsd's. Inode numbers are the server's own (`use_host_ino` off), so binds of
//! different host filesystems never show the guest two files with one inode number.
//!
//! QEMU listens on the port's socket (`fs.sock` in the run dir, `server=on,wait=off`, so the
//! template needs no server); `moat-vmfs` connects, sandboxes itself and then writes one byte
//! on its stdout, a pipe [`spawn`] waits on: the guest mounts the share only after that, so no
//! request can reach QEMU before the server is there. The server exits when QEMU closes the
//! socket.
//!
//! What it must never do: serve anything outside the share, or keep running once QEMU is gone.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};
use fuse_backend_rs::transport::{FuseBuf, FuseDevWriter, Reader};
use nix::mount::{mount, MsFlags};

use crate::error::{Result, VmError};
use crate::virtiofs::{SharedDir, SHARED_DIR};

/// The host end of the share's port in the run dir.
pub const SOCKET: &str = "fs.sock";

/// Where `moat-vmfs` is looked for after `$MOAT_VMFS_BIN`: beside the running program, then the
/// install locations.
const INSTALLED: &[&str] = &["/usr/local/lib/moat/moat-vmfs", "/usr/lib/moat/moat-vmfs"];

/// The `moat-vmfs` binary.
pub fn find_server() -> Result<PathBuf> {
    crate::agent::find_program("moat-vmfs", "MOAT_VMFS_BIN", INSTALLED)
}

/// How long `moat-vmfs` may take to connect and confine itself.
const READY_WITHIN_MS: u16 = 10_000;

/// `FUSE_INIT`'s opcode, and in `fuse_init_out`: `FUSE_BIG_WRITES`, `FUSE_MAX_PAGES`, and the
/// offsets (after the 16-byte `fuse_out_header`) of `flags`, `max_write` and `max_pages`.
const FUSE_INIT: u32 = 26;
const FUSE_BIG_WRITES: u32 = 1 << 5;
const FUSE_MAX_PAGES: u32 = 1 << 22;
const INIT_FLAGS_AT: usize = 16 + 12;
const INIT_MAX_WRITE_AT: usize = 16 + 20;
const INIT_MAX_PAGES_AT: usize = 16 + 28;
/// Pages per request: 1 MiB, what [`REQUEST_MAX`] and the guest's relay hold.
const MAX_PAGES: u16 = 256;

/// `sizeof(struct fuse_in_header)`.
const IN_HEADER: usize = 40;
/// The largest request: fuse-backend-rs's `max_write` (1 MiB) plus a page of headers.
const REQUEST_MAX: usize = (1 << 20) + 4096;

/// Capabilities the serving process keeps: those the passthrough uses to act for the guest's
/// users on files. Not CAP_MKNOD, which virtiofsd keeps: the guest's root cannot make a device
/// node in a host directory (FIFOs and sockets need no capability).
const KEEP: &[caps::Capability] = &[
    caps::Capability::CAP_CHOWN,
    caps::Capability::CAP_DAC_OVERRIDE,
    caps::Capability::CAP_FOWNER,
    caps::Capability::CAP_FSETID,
    caps::Capability::CAP_SETGID,
    caps::Capability::CAP_SETUID,
    caps::Capability::CAP_SETFCAP,
];

/// Prepare `<run>/shared` with `dir`'s binds and start `moat-vmfs` on the port socket of the
/// VM's QEMU (which must be listening already); returns once the server is serving.
pub fn spawn(run: &Path, dir: &SharedDir) -> Result<Child> {
    let bin = find_server()?;
    let stderr_path = run.join("moat-vmfs.stderr");
    let stderr =
        std::fs::File::create(&stderr_path).map_err(VmError::io("create", &stderr_path))?;
    let mut cmd = Command::new(&bin);
    cmd.arg(run.join(SOCKET))
        .arg(run.join(SHARED_DIR))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    {
        use std::os::unix::process::CommandExt;
        // Its own process group, like QEMU: it outlives a detaching `create`.
        cmd.process_group(0);
    }
    let mut child = crate::virtiofs::spawn_in_share(run, dir, &mut cmd, &bin)?;
    // One byte once it serves; EOF if it failed first.
    let got = child.stdout.take().map_or(Ok(0), |mut out| {
        use std::os::fd::AsFd;
        let mut fds = [nix::poll::PollFd::new(
            out.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(READY_WITHIN_MS)) {
            Ok(0) => Err(std::io::Error::from(std::io::ErrorKind::TimedOut)),
            Ok(_) => out.read(&mut [0u8; 1]),
            Err(e) => Err(e.into()),
        }
    });
    if !matches!(got, Ok(1)) {
        // Its serving process too (the same process group).
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = child.wait();
        let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        let why = match got {
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                format!("not serving within {} s", READY_WITHIN_MS / 1000)
            }
            Err(e) => e.to_string(),
            Ok(_) => "exited before serving".into(),
        };
        return Err(VmError::Virtiofsd {
            reason: format!("{}: {why}", bin.display()),
            stderr: log.trim().to_string(),
        });
    }
    Ok(child)
}

/// `moat-vmfs SOCKET DIR`: serve `DIR` over the QEMU chardev socket `SOCKET` (see the module doc).
pub fn server_main() -> ! {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.len() != 3 {
        eprintln!(
            "usage: moat-vmfs SOCKET DIR\n\nServes DIR to a moat VM over the FUSE port socket \
             SOCKET. moat starts it for a VM resumed from a template; it is not run by hand."
        );
        std::process::exit(2);
    }
    match run(Path::new(&args[1]), Path::new(&args[2])) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: moat-vmfs: {e}");
            std::process::exit(1);
        }
    }
}

fn run(socket: &Path, dir: &Path) -> std::result::Result<i32, String> {
    let stream =
        UnixStream::connect(socket).map_err(|e| format!("connect to {}: {e}", socket.display()))?;
    use nix::sched::CloneFlags as F;
    let flags = (F::CLONE_NEWPID | F::CLONE_NEWNS | F::CLONE_NEWNET).bits() as u64;
    match moat_sys::process::clone3(flags, false)
        .map_err(|e| format!("fork into new namespaces: {e}"))?
    {
        moat_sys::process::Forked::Child => {
            let code = match serve(stream, dir) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("error: moat-vmfs: {e}");
                    1
                }
            };
            moat_sys::process::exit_now(code)
        }
        moat_sys::process::Forked::Parent { pid, .. } => {
            drop(stream);
            // Only the serving process says it is ready (or, by closing, that it is not).
            let null = std::fs::File::open("/dev/null").map_err(|e| e.to_string())?;
            nix::unistd::dup2(null.as_raw_fd(), 1).map_err(|e| format!("close stdout: {e}"))?;
            loop {
                match nix::sys::wait::waitpid(pid, None) {
                    Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => return Ok(c),
                    Ok(nix::sys::wait::WaitStatus::Signaled(_, s, _)) => return Ok(128 + s as i32),
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(format!("wait for the server: {e}")),
                }
            }
        }
    }
}

/// Answer `FUSE_INIT` with big requests. fuse-backend-rs's passthrough asks for neither
/// `FUSE_BIG_WRITES` nor `FUSE_MAX_PAGES` (its users are virtiofs, where the transport sizes
/// requests), so the kernel would send every write as 4 KiB requests: measured 9 MB/s through
/// the share under TCG. The server's reply is taken from a pipe, given both flags (when the
/// kernel offered them), 1 MiB `max_write` and 256 `max_pages`, and sent on.
fn init(
    server: &Server<PassthroughFs<()>>,
    request: &mut [u8],
    reply: &mut [u8],
    stream: &mut UnixStream,
) -> std::result::Result<(), String> {
    // fuse_init_in: major, minor, max_readahead, flags (u32 each) after the 40-byte header.
    let offered = request
        .get(IN_HEADER + 12..IN_HEADER + 16)
        .map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap()));
    // pipe2: the one the seccomp filter allows (an old libc's pipe() is another call).
    let (rd, wr) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("make a pipe for INIT"))?;
    let r = Reader::<()>::from_fuse_buffer(FuseBuf::new(request))
        .map_err(|e| format!("parse INIT: {e}"))?;
    let w = FuseDevWriter::<()>::new(wr.as_raw_fd(), reply).map_err(|e| format!("reply: {e}"))?;
    server
        .handle_message(r, w.into(), None, None)
        .map_err(|e| format!("INIT: {e}"))?;
    drop(wr);
    let mut out = Vec::new();
    std::fs::File::from(rd)
        .read_to_end(&mut out)
        .map_err(|e| format!("read the INIT reply: {e}"))?;
    let error = out
        .get(4..8)
        .map_or(-1, |b| i32::from_le_bytes(b.try_into().unwrap()));
    if error == 0 && out.len() >= INIT_MAX_PAGES_AT + 2 {
        let want = offered & (FUSE_BIG_WRITES | FUSE_MAX_PAGES);
        let flags = u32::from_le_bytes(out[INIT_FLAGS_AT..INIT_FLAGS_AT + 4].try_into().unwrap());
        out[INIT_FLAGS_AT..INIT_FLAGS_AT + 4].copy_from_slice(&(flags | want).to_le_bytes());
        if want & FUSE_MAX_PAGES != 0 {
            let max_write = u32::from(MAX_PAGES) * 4096;
            out[INIT_MAX_WRITE_AT..INIT_MAX_WRITE_AT + 4].copy_from_slice(&max_write.to_le_bytes());
            out[INIT_MAX_PAGES_AT..INIT_MAX_PAGES_AT + 2].copy_from_slice(&MAX_PAGES.to_le_bytes());
        } else if want & FUSE_BIG_WRITES != 0 {
            // Without MAX_PAGES the kernel caps a request at 32 pages.
            out[INIT_MAX_WRITE_AT..INIT_MAX_WRITE_AT + 4]
                .copy_from_slice(&(32u32 * 4096).to_le_bytes());
        }
    }
    stream
        .write_all(&out)
        .map_err(|e| format!("send the INIT reply: {e}"))
}

fn sys(what: &str) -> impl FnOnce(nix::errno::Errno) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// The system calls the serving process makes once it is confined: its request loop, the
/// passthrough's file operations (acting as the guest's user through `setres[ug]id`), Rust's
/// runtime and the allocator. Everything else (exec, sockets, mounts, namespaces, ptrace, bpf,
/// io_uring, keys, ...) fails with EPERM. Extended attributes are off in the passthrough, so
/// their calls are not listed; `open_by_handle_at` is not either (file handles are off, and it
/// needs CAP_DAC_READ_SEARCH, which the server does not keep).
#[rustfmt::skip]
const SYSCALLS: &[&str] = &[
    // The request loop: the port's socket and the INIT reply's pipe.
    "read", "readv", "recvfrom", "recvmsg", "write", "writev", "sendto", "sendmsg", "pipe2",
    "close", "dup", "dup2", "dup3", "fcntl", "poll", "ppoll",
    // The passthrough's file operations.
    "openat", "openat2", "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2",
    "lseek", "newfstatat", "fstat", "statx", "getdents64", "readlinkat", "mkdirat", "mknodat",
    "symlinkat", "linkat", "unlinkat", "renameat", "renameat2", "fchmod", "fchmodat",
    "fchmodat2", "fchown", "fchownat", "utimensat", "ftruncate", "fallocate", "fsync",
    "fdatasync", "fstatfs", "statfs", "flock", "copy_file_range", "fadvise64", "umask",
    // Acting as the guest's user, and dropping CAP_FSETID on writes that must clear set-id bits.
    "setresuid", "setresgid", "getuid", "geteuid", "getgid", "getegid", "capget", "capset",
    // Rust's runtime: memory, signals, clocks, randomness, exit.
    "brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "futex", "sched_yield",
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack", "clock_gettime",
    "clock_nanosleep", "nanosleep", "getrandom", "getpid", "gettid", "tgkill", "rseq",
    "restart_syscall", "exit", "exit_group",
];

/// Put [`SYSCALLS`] in force (no_new_privs is set): the last step before serving.
fn confine_syscalls() -> std::result::Result<(), String> {
    let arch = moat_seccomp::Arch::native()
        .ok_or("seccomp: no syscall table for this machine's architecture")?;
    let filter = moat_seccomp::compile(
        &moat_seccomp::allow_only(SYSCALLS, nix::errno::Errno::EPERM as u32),
        arch,
    )
    .map_err(|e| format!("compile the seccomp filter: {e}"))?;
    moat_sys::seccomp::set_mode_filter(&moat_seccomp::program_bytes(&filter.program), 0)
        .map_err(sys("install the seccomp filter"))?;
    Ok(())
}

/// In the new namespaces: confine this process to `dir`, then answer requests until QEMU closes.
fn serve(mut stream: UnixStream, dir: &Path) -> std::result::Result<(), String> {
    crate::virtiofs::slave_root().map_err(sys("make / a slave mount"))?;
    // This pid namespace's own /proc: the passthrough reopens files through /proc/self/fd.
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(sys("mount /proc"))?;
    let fs: PassthroughFs<()> = PassthroughFs::new(Config {
        root_dir: "/".into(),
        do_import: true,
        cache_policy: CachePolicy::Auto,
        xattr: false,
        entry_timeout: Duration::from_secs(1),
        attr_timeout: Duration::from_secs(1),
        ..Default::default()
    })
    .map_err(|e| format!("set up the passthrough: {e}"))?;
    nix::unistd::chdir(dir).map_err(sys("enter the share"))?;
    nix::unistd::pivot_root(".", ".").map_err(sys("pivot into the share"))?;
    nix::mount::umount2(".", nix::mount::MntFlags::MNT_DETACH)
        .map_err(sys("detach the old root"))?;
    nix::unistd::chdir("/").map_err(sys("enter the new root"))?;
    let keep: caps::CapsHashSet = KEEP.iter().copied().collect();
    for c in caps::all() {
        if !keep.contains(&c) {
            caps::drop(None, caps::CapSet::Bounding, c)
                .map_err(|e| format!("drop {c} from the bounding set: {e}"))?;
        }
    }
    for set in [
        caps::CapSet::Inheritable,
        caps::CapSet::Effective,
        caps::CapSet::Permitted,
    ] {
        let have = caps::read(None, set).map_err(|e| format!("read {set:?}: {e}"))?;
        caps::set(None, set, &have.intersection(&keep).copied().collect())
            .map_err(|e| format!("limit the {set:?} capabilities: {e}"))?;
    }
    nix::sys::prctl::set_no_new_privs().map_err(sys("set no_new_privs"))?;
    confine_syscalls()?;
    let server = Server::new(fs);
    let mut out = std::io::stdout().lock();
    out.write_all(b"1")
        .and_then(|()| out.flush())
        .map_err(|e| format!("say ready: {e}"))?;
    drop(out);
    let null = std::fs::File::open("/dev/null");
    if let Ok(n) = &null {
        let _ = nix::unistd::dup2(n.as_raw_fd(), 1);
    }
    let mut request = vec![0u8; REQUEST_MAX];
    let mut reply = vec![0u8; REQUEST_MAX];
    let fd = stream.as_raw_fd();
    // What a hostile guest can make it log is capped.
    let mut logged = 0u32;
    loop {
        match stream.read_exact(&mut request[..IN_HEADER]) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(format!("read a request: {e}")),
        }
        let len = u32::from_le_bytes(request[..4].try_into().unwrap()) as usize;
        if !(IN_HEADER..=REQUEST_MAX).contains(&len) {
            return Err(format!("a request of {len} bytes"));
        }
        stream
            .read_exact(&mut request[IN_HEADER..len])
            .map_err(|e| format!("read a request: {e}"))?;
        let opcode = u32::from_le_bytes(request[4..8].try_into().unwrap());
        if opcode == FUSE_INIT {
            init(&server, &mut request[..len], &mut reply, &mut stream)?;
            continue;
        }
        let r = Reader::<()>::from_fuse_buffer(FuseBuf::new(&mut request[..len]))
            .map_err(|e| format!("parse a request: {e}"))?;
        let w = FuseDevWriter::<()>::new(fd, &mut reply).map_err(|e| format!("reply: {e}"))?;
        if let Err(e) = server.handle_message(r, w.into(), None, None) {
            use fuse_backend_rs::Error as E;
            match e {
                // The socket is gone (QEMU exited): nothing more to serve.
                E::EncodeMessage(io) if io.kind() == std::io::ErrorKind::BrokenPipe => {
                    return Ok(())
                }
                e if logged < 20 => {
                    logged += 1;
                    eprintln!("moat-vmfs: {e}");
                }
                _ => {}
            }
        }
    }
}
