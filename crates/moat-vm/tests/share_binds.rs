//! Binds added to the share of a running virtiofsd (what a pod VM does for each new container):
//! they appear in virtiofsd's mount namespace, a read-only one is read-only there (enforced on
//! the host side, whatever the guest does), the host's mount table does not change, and
//! `remove_binds` takes them away again. No VM is booted: a client connection is enough for
//! virtiofsd to set up its sandbox.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use moat_vm::virtiofs::{self, SharedBind, SharedDir};

fn host_mounts() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap()
}

/// In a thread inside the mount namespace of `pid`: run `f` (paths are relative to its root).
fn in_ns<T: Send>(pid: u32, f: impl FnOnce() -> T + Send) -> T {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt")).unwrap();
    std::thread::scope(|s| {
        s.spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS).unwrap();
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
            f()
        })
        .join()
        .unwrap()
    })
}

fn child_of(pid: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
        if let Some(c) = t.split_whitespace().next() {
            return c.parse().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "virtiofsd did not fork its sandbox"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn binds_added_to_a_running_share_keep_read_only_on_the_host() {
    if !nix::unistd::geteuid().is_root() || !virtiofs::virtiofsd_binary().exists() {
        eprintln!(
            "skipped: needs root and {}",
            virtiofs::virtiofsd_binary().display()
        );
        return;
    }
    let run = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("ro.txt"), "host").unwrap();
    let rw_file = src.path().join("rw.txt");
    std::fs::write(&rw_file, "before").unwrap();
    let mut child = virtiofs::spawn(run.path(), &SharedDir::default()).unwrap();
    // virtiofsd sets up its sandbox once a client has connected.
    let _client = UnixStream::connect(run.path().join(virtiofs::SOCKET)).unwrap();
    let server = child_of(child.id());
    let binds = vec![
        SharedBind {
            source: src.path().to_owned(),
            target: PathBuf::from("c1/rootfs"),
            readonly: true,
            recursive: false,
        },
        SharedBind {
            source: rw_file.clone(),
            target: PathBuf::from("c1/1"),
            readonly: false,
            recursive: false,
        },
    ];
    virtiofs::add_binds(child.id(), &binds).unwrap();
    let (ro_read, ro_write, rw_write, share_write) = in_ns(server, || {
        let ro_read = std::fs::read_to_string("/c1/rootfs/ro.txt").ok();
        let ro_write = std::fs::write("/c1/rootfs/ro.txt", "guest").map_err(|e| e.raw_os_error());
        let rw_write = std::fs::write("/c1/1", "after").map_err(|e| e.raw_os_error());
        let share_write = std::fs::write("/new", "x").map_err(|e| e.raw_os_error());
        (ro_read, ro_write, rw_write, share_write)
    });
    assert_eq!(ro_read.as_deref(), Some("host"));
    assert_eq!(
        ro_write,
        Err(Some(libc_erofs())),
        "a read-only bind is writable"
    );
    assert_eq!(rw_write, Ok(()));
    assert_eq!(std::fs::read_to_string(&rw_file).unwrap(), "after");
    assert_eq!(
        share_write,
        Err(Some(libc_erofs())),
        "the share's tmpfs stays read-only"
    );
    assert_eq!(
        std::fs::read_to_string(src.path().join("ro.txt")).unwrap(),
        "host"
    );
    let host = host_mounts();
    for p in [run.path(), src.path()] {
        assert!(
            !host.contains(&p.display().to_string()),
            "a mount at {} in the host's namespace:\n{host}",
            p.display()
        );
    }

    virtiofs::remove_binds(
        child.id(),
        &[PathBuf::from("c1/rootfs"), PathBuf::from("c1/1")],
    )
    .unwrap();
    let gone = in_ns(server, || {
        (
            Path::new("/c1/rootfs").exists(),
            Path::new("/c1/1").exists(),
        )
    });
    assert_eq!(gone, (false, false));
    let _ = child.kill();
    let _ = child.wait();
}

fn libc_erofs() -> i32 {
    nix::errno::Errno::EROFS as i32
}
