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

/// Root and virtiofsd are there (else the test is skipped, saying why).
fn can_run() -> bool {
    let ok = nix::unistd::geteuid().is_root() && virtiofs::virtiofsd_binary().exists();
    if !ok {
        eprintln!(
            "skipped: needs root and {}",
            virtiofs::virtiofsd_binary().display()
        );
    }
    ok
}

#[test]
fn binds_added_to_a_running_share_keep_read_only_on_the_host() {
    if !can_run() {
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
            propagate: false,
        },
        SharedBind {
            source: rw_file.clone(),
            target: PathBuf::from("c1/1"),
            readonly: false,
            recursive: false,
            propagate: false,
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

/// A mount the host makes under a bind's source after the bind was added reaches the share only
/// when the bind asked for propagation (`rslave`/`rshared`: `propagate`); otherwise the bind is
/// private, and what the host mounts later (with flags of its own) stays out of the share.
#[test]
fn later_host_mounts_reach_only_propagating_binds() {
    if !can_run() {
        return;
    }
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    let run = tempfile::tempdir().unwrap();
    let srcs = tempfile::tempdir().unwrap();
    // Two sources, each a shared mount point of the host (so mounts under them propagate).
    let (private, propagating) = (srcs.path().join("p"), srcs.path().join("s"));
    for d in [&private, &propagating] {
        std::fs::create_dir_all(d.join("sub")).unwrap();
        mount(Some(d), d, None::<&str>, MsFlags::MS_BIND, None::<&str>).unwrap();
        mount(
            None::<&str>,
            d,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .unwrap();
    }
    let mut child = virtiofs::spawn(run.path(), &SharedDir::default()).unwrap();
    let _client = UnixStream::connect(run.path().join(virtiofs::SOCKET)).unwrap();
    let server = child_of(child.id());
    let bind = |source: &Path, target: &str, propagate: bool| SharedBind {
        source: source.to_owned(),
        target: PathBuf::from(target),
        readonly: false,
        recursive: true,
        propagate,
    };
    virtiofs::add_binds(
        child.id(),
        &[
            bind(&private, "c/p", false),
            bind(&propagating, "c/s", true),
        ],
    )
    .unwrap();
    for d in [&private, &propagating] {
        let sub = d.join("sub");
        mount(
            Some("tmpfs"),
            &sub,
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        std::fs::write(sub.join("later"), "host").unwrap();
    }
    let seen = in_ns(server, || {
        (
            Path::new("/c/p/sub/later").exists(),
            Path::new("/c/s/sub/later").exists(),
        )
    });
    for d in [&private, &propagating] {
        let _ = umount2(&d.join("sub"), MntFlags::MNT_DETACH);
        let _ = umount2(d.as_path(), MntFlags::MNT_DETACH);
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        seen,
        (false, true),
        "(private bind, propagating bind) saw the later host mount"
    );
}
