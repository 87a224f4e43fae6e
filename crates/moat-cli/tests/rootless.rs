//! Rootless `moat`, run as created unprivileged users through `runuser` (as
//! crates/moat-runtime/tests/rootless.rs does): `moat-rootless` with /etc/subuid and /etc/subgid
//! ranges, and `moat-rootless-nosub` without. Each test has its own store
//! (`XDG_DATA_HOME=<tempdir in the user's home>`); the runtime state is the user's
//! `$XDG_RUNTIME_DIR/moat`. Images come from a real docker-registry on 127.0.0.1 or an imported
//! OCI layout, with a file owned by uid 1000, a whiteout and an opaque directory.
//!
//! slirp4netns and pasta need a `/dev/net/tun` the user may open (0666 on stock Debian): where it is
//! 0600, `harness::rootless::Tun` makes it 0666 while a test needs it and restores the mode after.

#[path = "../../moat-image/tests/common/mod.rs"]
mod common;
mod harness;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{write_layout, Comp, Tar};
use harness::rootless::*;
use harness::{free_port, http_get, wait_for};

/// The test image: busybox and /etc/passwd, `home/u/f` owned by 1000:1000, and a second layer
/// with a whiteout of `/gone` and an opaque `/opq` (so the overlay's view is checked).
fn image_layout(dir: &Path) {
    let bb = std::fs::read("/bin/busybox").expect("busybox-static installed");
    let mut t = Tar::new();
    t.dir("bin/").file_mode("bin/busybox", &bb, 0o755);
    for c in [
        "sh", "echo", "cat", "id", "sleep", "ls", "test", "httpd", "true", "touch", "stat",
    ] {
        t.symlink(&format!("bin/{c}"), "busybox");
    }
    t.dir("etc/")
        .file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nu:x:1000:1000::/home/u:/bin/sh\n",
        )
        .file("etc/group", b"root:x:0:\nu:x:1000:\n")
        .dir("home/")
        .pax(&[("uid", b"1000"), ("gid", b"1000")])
        .dir("home/u/")
        .pax(&[("uid", b"1000"), ("gid", b"1000")])
        .file("home/u/f", b"owned by u\n")
        .file("gone", b"hidden by the next layer\n")
        .dir("opq/")
        .file("opq/a", b"a\n")
        .symlink("swap", "/tmp");
    // A directory over the lower layer's symlink to the host's /tmp: it replaces the link (the
    // copy fallback must never write through it).
    let mut t2 = Tar::new();
    t2.file(".wh.gone", b"")
        .dir("opq/")
        .file("opq/.wh..wh..opq", b"")
        .file("opq/b", b"b\n")
        .dir("swap/")
        .file("swap/moat-rl-escape", b"stays in the rootfs\n");
    write_layout(
        dir,
        "v1",
        &[(t.finish(), Comp::Gzip), (t2.finish(), Comp::Gzip)],
        &["/bin/sh", "-c", "echo default"],
    );
}

/// Import the test image as `name` into the store of `s` (no registry needed).
fn import(s: &Session, name: &str) {
    let layout = tempfile::tempdir_in(&s.user.home).unwrap();
    image_layout(layout.path());
    sh(
        Command::new("chown")
            .arg("-R")
            .arg(s.user.name)
            .arg(layout.path()),
        "chown",
    );
    let out = s.ok(&[
        "image",
        "import",
        layout.path().to_str().unwrap(),
        "--name",
        name,
    ]);
    assert!(out.contains("Loaded image"), "{out}");
}

/// The expected uid_map inside a container of `u`: its own id as 0, its ranges from 1 on.
fn expected_uid_map(u: &User) -> Vec<[u64; 3]> {
    let mut v = vec![[0, u64::from(u.uid), 1]];
    let mut next = 1;
    for (start, count) in ranges("/etc/subuid", u.name) {
        v.push([next, start, count]);
        next += count;
    }
    v
}

fn parse_map(text: &str) -> Vec<[u64; 3]> {
    text.lines()
        .map(|l| {
            let f: Vec<u64> = l.split_whitespace().map(|w| w.parse().unwrap()).collect();
            [f[0], f[1], f[2]]
        })
        .collect()
}

const PROBE: &str = "id; cat /proc/self/uid_map; echo --; ls -ln /home/u | tail -1; ls /opq; \
                     ls /swap; test -e /gone || echo gone-hidden; exit 3";

/// What [`PROBE`] printed: (`id`, uid_map lines, the rest).
fn probe_output(out: &str) -> (String, Vec<[u64; 3]>, String) {
    let (head, rest) = out.split_once("--\n").expect(out);
    let (id, map) = head.split_once('\n').unwrap();
    (id.to_owned(), parse_map(map), rest.to_owned())
}

#[test]
fn pull_and_run_as_the_user_with_mapped_ids() {
    let Some(s) = Session::new(WITH_RANGES) else {
        return;
    };
    if !have_slirp() {
        return;
    }
    let Some(reg) = common::registry::Registry::start() else {
        return;
    };
    let layout = tempfile::tempdir().unwrap();
    image_layout(layout.path());
    reg.push(layout.path(), "v1", "moat/rl");
    let reference = format!("{}/moat/rl:v1", reg.addr());
    let o = s.cmd(&["pull", &reference]);
    assert!(o.status.success(), "pull: {}", text(&o.stderr));
    assert!(text(&o.stderr).contains("pulled"), "{}", text(&o.stderr));
    assert!(
        s.store().join("blobs").is_dir(),
        "store not under XDG_DATA_HOME/moat"
    );
    // Files are owned by the mapped ids on the host: uid 1000 is the user's range start + 999.
    let sub = ranges("/etc/subuid", WITH_RANGES)[0].0;
    let mut owners = vec![];
    for e in std::fs::read_dir(s.store().join("snapshots"))
        .unwrap()
        .flatten()
    {
        if let Ok(md) = std::fs::metadata(e.path().join("fs/home/u/f")) {
            owners.push((md.uid(), md.gid()));
        }
        // The opaque directory is marked for an overlay in a user namespace.
        if e.path().join("fs/opq/b").exists() {
            let mut buf = [0u8; 4];
            let n = rustix::fs::getxattr(e.path().join("fs/opq"), "user.overlay.opaque", &mut buf);
            assert_eq!(n.ok().map(|n| &buf[..n]), Some(&b"y"[..]));
        }
    }
    let want = (
        sub as u32 + 999,
        ranges("/etc/subgid", WITH_RANGES)[0].0 as u32 + 999,
    );
    assert_eq!(owners, vec![want], "owner of home/u/f on the host");
    // Run with the default rootless network (slirp4netns).
    let _tun = Tun::open();
    let script = format!("grep -q tap0 /proc/net/dev && echo tap0; {PROBE}");
    let o = s.cmd(&["run", "--rm", &reference, "sh", "-c", &script]);
    assert_eq!(o.status.code(), Some(3), "stderr: {}", text(&o.stderr));
    let out = text(&o.stdout);
    let out = out.strip_prefix("tap0\n").expect(&out);
    let (id, map, rest) = probe_output(out);
    assert!(id.starts_with("uid=0(root) gid=0(root)"), "{id}");
    assert_eq!(map, expected_uid_map(s.user));
    assert!(rest.starts_with("-rw-r--r--    1 1000     1000 "), "{rest}");
    assert_eq!(
        rest.lines().skip(1).collect::<Vec<_>>(),
        ["b", "moat-rl-escape", "gone-hidden"],
        "{rest}"
    );
    assert_eq!(text(&o.stderr), "", "a clean run prints nothing else");
    let images = s.ok(&["images"]);
    assert!(images.contains("moat/rl"), "{images}");
    s.ok(&["rmi", &reference]);
    assert_eq!(s.ok(&["ps", "-a", "-q"]), "", "--rm left a container");
}

#[test]
fn detached_logs_exec_stop_rm_leave_nothing() {
    let Some(s) = Session::new(WITH_RANGES) else {
        return;
    };
    import(&s, "example.com/rl:v1");
    let name = format!("rl-det-{}", std::process::id());
    let id = s
        .ok(&[
            "run",
            "-d",
            "--network",
            "none",
            "--name",
            &name,
            "example.com/rl:v1",
            "sh",
            "-c",
            "echo started; exec sleep 1001",
        ])
        .trim()
        .to_owned();
    assert!(
        s.user.xdg.join("moat").join(&id).is_dir(),
        "runtime state not under $XDG_RUNTIME_DIR/moat"
    );
    let ps = s.ok(&["ps"]);
    assert!(ps.contains(&name) && ps.contains("running"), "{ps}");
    wait_for("the log", || s.ok(&["logs", &name]) == "started\n");
    // CVE-2019-5736 rootless too: the monitor runs from a read-only view of moat's binary
    // (made in its own mount namespace), never from the binary itself.
    let monitor = processes_of(s.user, &name);
    let pid = monitor
        .iter()
        .find(|l| l.contains(" run -d "))
        .and_then(|l| l.split(':').next())
        .unwrap_or_else(|| panic!("no monitor of the container in {monitor:?}"));
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_ne!(
        exe,
        Path::new(BIN),
        "the monitor runs from the binary itself"
    );
    let w = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/exe"));
    assert!(
        w.is_err(),
        "the monitor's binary ({}) is writable",
        exe.display()
    );
    let out = s.ok(&["exec", &name, "sh", "-c", "id -u; cat /proc/1/cmdline"]);
    assert_eq!(out, "0\nsleep\u{0}1001\u{0}");
    assert_eq!(s.ok(&["exec", "-u", "1000", &name, "id", "-u"]), "1000\n");
    // The container's processes are the user's (0) and its range's (1000 -> start + 999).
    s.ok(&["stop", "-t", "1", &name]);
    let ps = s.ok(&["ps", "-a"]);
    assert!(
        ps.contains("exited (143)") || ps.contains("exited (137)"),
        "{ps}"
    );
    s.ok(&["rm", &name]);
    s.assert_gone(&id);
    assert!(!s.ok(&["ps", "-a"]).contains(&name));
}

#[test]
fn published_port_answers_from_the_host() {
    let Some(s) = Session::new(WITH_RANGES) else {
        return;
    };
    if !have_slirp() {
        return;
    }
    import(&s, "example.com/rl:v1");
    publish_through(&s, "slirp4netns");
    if Path::new("/usr/bin/pasta").exists() {
        publish_through(&s, "pasta");
    } else {
        eprintln!("SKIP: -p through pasta: pasta is not installed (apt-get install passt)");
    }
}

/// `-p 127.0.0.1:PORT:80` on network `net` answers from the host; after `rm -f` nothing is
/// left (the helper neither) and the port is closed.
fn publish_through(s: &Session, net: &str) {
    let port = free_port();
    let web = tempfile::tempdir_in(&s.user.home).unwrap();
    std::fs::write(web.path().join("index.html"), "hello from rootless moat\n").unwrap();
    sh(
        Command::new("chmod").arg("-R").arg("a+rX").arg(web.path()),
        "chmod",
    );
    let vol = format!("{}:/www:ro", web.path().display());
    let publish = format!("127.0.0.1:{port}:80");
    let _tun = Tun::open();
    let id = s
        .ok(&[
            "run",
            "-d",
            "--network",
            net,
            "-p",
            &publish,
            "-v",
            &vol,
            "example.com/rl:v1",
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/www",
        ])
        .trim()
        .to_owned();
    let mut body = String::new();
    wait_for("the published port", || {
        body = http_get(port).unwrap_or_default();
        body.contains("hello from rootless moat")
    });
    let ps = s.ok(&["ps"]);
    assert!(
        ps.contains(&format!("127.0.0.1:{port}->80/tcp")),
        "{net}: {ps}"
    );
    s.ok(&["rm", "-f", &id]);
    s.assert_gone(&id);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "{net}: the port is still forwarded"
    );
}

#[test]
fn a_limit_without_a_delegated_cgroup_is_one_error() {
    let Some(s) = Session::new(WITH_RANGES) else {
        return;
    };
    import(&s, "example.com/rl:v1");
    for (flag, value, field) in [
        ("--memory", "64m", "linux.resources.memory"),
        ("--pids-limit", "10", "linux.resources.pids"),
    ] {
        let o = s.cmd(&[
            "run",
            "--rm",
            "--network",
            "none",
            flag,
            value,
            "example.com/rl:v1",
            "true",
        ]);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(125), "{flag}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("error: create container")
                && err.contains(field)
                && err.contains(&format!("({} on the host)", s.user.uid))
                && err.contains("delegate it"),
            "{err}"
        );
    }
    // The bridge network needs root: refused, naming the rootless choices.
    let o = s.cmd(&[
        "run",
        "--rm",
        "--network",
        "bridge",
        "example.com/rl:v1",
        "true",
    ]);
    let err = text(&o.stderr);
    assert!(err.starts_with("error: --network bridge needs root") && err.lines().count() == 1);
    assert_eq!(s.ok(&["ps", "-a", "-q"]), "");
    let left: Vec<_> = std::fs::read_dir(s.store().join("containers"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn without_subordinate_ids_only_the_user_is_mapped_and_said_once() {
    let Some(s) = Session::new(WITHOUT_RANGES) else {
        return;
    };
    let o = s
        .command(&["image", "import", "/nonexistent"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let notice = "no /etc/subuid or /etc/subgid range for moat-rootless-nosub";
    assert!(text(&o.stderr).contains(notice), "{}", text(&o.stderr));
    import(&s, "example.com/rl:v1");
    let o = s.cmd(&[
        "run",
        "--rm",
        "--network",
        "none",
        "example.com/rl:v1",
        "sh",
        "-c",
        PROBE,
    ]);
    assert!(
        !text(&o.stderr).contains(notice),
        "said twice: {}",
        text(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    let (id, map, rest) = probe_output(&text(&o.stdout));
    assert!(id.starts_with("uid=0(root)"), "{id}");
    assert_eq!(map, vec![[0, u64::from(s.user.uid), 1]]);
    // uid 1000 is not mapped: the file stays the user's, root in the container.
    assert!(rest.starts_with("-rw-r--r--    1 0        0 "), "{rest}");
    assert_eq!(
        rest.lines().skip(1).collect::<Vec<_>>(),
        ["b", "moat-rl-escape", "gone-hidden"]
    );
}

#[test]
fn the_copy_fallback_shows_the_same_tree() {
    let Some(s) = Session::new(WITH_RANGES) else {
        return;
    };
    import(&s, "example.com/rl:v1");
    let run = |copy: bool| {
        let mut c = s.command(&[
            "run",
            "--rm",
            "--network",
            "none",
            "example.com/rl:v1",
            "sh",
            "-c",
            PROBE,
        ]);
        if copy {
            // `env` is the program runuser runs: its first arguments are assignments.
            let args: Vec<_> = c.get_args().map(|a| a.to_owned()).collect();
            c = Command::new("runuser");
            let at = args.iter().position(|a| a == "env").unwrap() + 1;
            c.args(&args[..at])
                .arg("MOAT_ROOTFS_COPY=1")
                .args(&args[at..])
                .stdin(std::process::Stdio::null());
        }
        c.output().unwrap()
    };
    let (overlay, copied) = (run(false), run(true));
    assert_eq!(overlay.status.code(), Some(3), "{}", text(&overlay.stderr));
    assert_eq!(copied.status.code(), Some(3), "{}", text(&copied.stderr));
    assert_eq!(text(&overlay.stdout), text(&copied.stdout));
    let err = text(&copied.stderr);
    assert!(
        err.starts_with("moat: ") && err.lines().count() == 1,
        "{err}"
    );
    assert!(
        text(&copied.stdout).contains("\nmoat-rl-escape\n"),
        "{}",
        text(&copied.stdout)
    );
    assert!(
        !Path::new("/tmp/moat-rl-escape").exists(),
        "the copy wrote through a layer's symlink"
    );
    assert_eq!(s.ok(&["ps", "-a", "-q"]), "");
}

#[test]
fn terminal_run_and_exec_as_the_user() {
    let Some(s) = Session::new(WITH_RANGES) else {
        return;
    };
    import(&s, "example.com/rl:v1");
    // The store's path is too long for a console socket: it goes to $XDG_RUNTIME_DIR/moat.
    let out = s.ok(&[
        "run",
        "--rm",
        "-t",
        "--network",
        "none",
        "example.com/rl:v1",
        "sh",
        "-c",
        "tty; id -u",
    ]);
    assert!(
        out.contains("/dev/pts/0") && out.contains("0\r\n"),
        "{out:?}"
    );
    let id = s
        .ok(&[
            "run",
            "-d",
            "--network",
            "none",
            "example.com/rl:v1",
            "sleep",
            "1002",
        ])
        .trim()
        .to_owned();
    let out = s.ok(&["exec", "-t", &id, "sh", "-c", "tty"]);
    assert!(out.contains("/dev/pts/"), "{out:?}");
    s.ok(&["rm", "-f", &id]);
    s.assert_gone(&id);
}

#[test]
fn a_delegated_cgroup_is_used_for_limits() {
    let Some(s) = Session::new(WITH_RANGES) else {
        return;
    };
    import(&s, "example.com/rl:v1");
    // Delegate a subtree to the user (as systemd's Delegate=yes does) and start moat in it.
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let name = format!("moat-rl-deleg-{}", std::process::id());
    let (top, place) = if v2 {
        let top = Path::new("/sys/fs/cgroup").join(&name);
        (top.clone(), top.join("leaf"))
    } else {
        let top = Path::new("/sys/fs/cgroup/pids").join(&name);
        (top.clone(), top.clone())
    };
    std::fs::create_dir_all(&place).unwrap();
    let _cleanup = Cleanup(|| {
        // The container's monitor may still be exiting (EBUSY until it has left).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let _ = std::fs::remove_dir(top.join("leaf"));
        while std::fs::remove_dir(&top).is_err()
            && top.exists()
            && std::time::Instant::now() < deadline
        {
            let _ = std::fs::remove_dir(top.join("leaf"));
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    if v2 {
        let _ = std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+pids");
    }
    sh(
        Command::new("chown").arg("-R").arg(s.user.name).arg(&top),
        "chown",
    );
    let mut moat = s.command(&[
        "run",
        "-d",
        "--network",
        "none",
        "--pids-limit",
        "7",
        "example.com/rl:v1",
        "sleep",
        "1003",
    ]);
    let args: Vec<_> = std::iter::once(moat.get_program().to_owned())
        .chain(moat.get_args().map(|a| a.to_owned()))
        .collect();
    moat = Command::new("sh");
    moat.arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec \"$@\"",
            place.display()
        ))
        .arg("sh")
        .args(args)
        .stdin(std::process::Stdio::null());
    let o = moat.output().unwrap();
    assert!(o.status.success(), "run: {}", text(&o.stderr));
    let id = text(&o.stdout).trim().to_owned();
    let dir = top.join(format!("moat-{}", &id[..12]));
    let max = std::fs::read_to_string(dir.join("pids.max")).unwrap();
    assert_eq!(max.trim(), "7");
    let inspect: serde_json::Value = serde_json::from_str(&s.ok(&["inspect", &id])).unwrap();
    let pid = inspect["State"]["Pid"].to_string();
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
    assert!(procs.lines().any(|l| l == pid), "init {pid} not in {procs}");
    // The limit holds: the eighth process of the container cannot be forked.
    let o = s.cmd(&[
        "exec",
        &id,
        "sh",
        "-c",
        "for i in 1 2 3 4 5 6 7 8; do sleep 5 & done",
    ]);
    assert!(
        text(&o.stderr).contains("can't fork"),
        "{}",
        text(&o.stderr)
    );
    s.ok(&["rm", "-f", &id]);
    s.assert_gone(&id);
    assert!(!dir.exists(), "cgroup {} left", dir.display());
}

#[test]
fn host_and_none_networks() {
    let Some(s) = Session::new(WITH_RANGES) else {
        return;
    };
    import(&s, "example.com/rl:v1");
    let ifaces = |text: &str| -> Vec<String> {
        let mut v: Vec<String> = text
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next().map(|n| n.trim().to_owned()))
            .collect();
        v.sort();
        v
    };
    let run = |net: &str| {
        s.ok(&[
            "run",
            "--rm",
            "--network",
            net,
            "example.com/rl:v1",
            "cat",
            "/proc/net/dev",
        ])
    };
    // Other tests may add or remove interfaces meanwhile: the container's list lies between
    // what the host had before and after.
    let before = ifaces(&std::fs::read_to_string("/proc/net/dev").unwrap());
    let inside = ifaces(&run("host"));
    let after = ifaces(&std::fs::read_to_string("/proc/net/dev").unwrap());
    assert!(
        before
            .iter()
            .filter(|i| after.contains(i))
            .all(|i| inside.contains(i))
            && inside
                .iter()
                .all(|i| before.contains(i) || after.contains(i))
            && inside.len() > 1,
        "--network host: {inside:?}, the host's: {before:?} / {after:?}"
    );
    assert_eq!(
        ifaces(&run("none")),
        ["lo"],
        "--network none has loopback only"
    );
    assert_eq!(s.ok(&["ps", "-a", "-q"]), "");
}
