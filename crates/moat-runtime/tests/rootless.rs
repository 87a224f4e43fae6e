//! Rootless moat-runtime, run as a created unprivileged user (`moat-rootless`, with /etc/subuid
//! and /etc/subgid ranges and a private `XDG_RUNTIME_DIR`), as runc 1.1 runs rootless:
//! `spec --rootless` + `run` (compared with runc on the same bundle), `exec`, `delete` leaving
//! nothing, a limit without a writable cgroup refused with one `error:` line, a delegated cgroup
//! (a subtree chown'ed to the user, as systemd delegation does) used, and rootless podman with
//! moat as its runtime.
//!
//! The tests need root to create the user; every container command runs as the user through
//! `runuser`. A tool that is not installed skips its test with a printed reason.

mod common;
use common::support::*;
use common::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{json, Value};

const USER: &str = "moat-rootless";
const LIMIT: Duration = Duration::from_secs(60);

/// The unprivileged test user.
struct User {
    uid: u32,
    home: PathBuf,
    xdg: PathBuf,
}

/// Create the user once (idempotent across runs): home, subordinate id ranges, runtime dir.
fn user() -> &'static User {
    static U: OnceLock<User> = OnceLock::new();
    U.get_or_init(|| {
        require_root();
        let exists = Command::new("id").arg(USER).output().unwrap();
        if !exists.status.success() {
            ok(
                Command::new("useradd").args(["-m", "-s", "/bin/sh", USER]),
                LIMIT,
                "useradd",
            );
        }
        let uid: u32 = ok(Command::new("id").args(["-u", USER]), LIMIT, "id -u")
            .trim()
            .parse()
            .unwrap();
        for f in ["/etc/subuid", "/etc/subgid"] {
            let s = std::fs::read_to_string(f).unwrap_or_default();
            if !s.lines().any(|l| l.starts_with(&format!("{USER}:"))) {
                let flag = if f.ends_with("uid") {
                    "--add-subuids"
                } else {
                    "--add-subgids"
                };
                ok(
                    Command::new("usermod").args([flag, "300000-365535", USER]),
                    LIMIT,
                    "usermod",
                );
            }
        }
        let xdg = PathBuf::from(format!("/run/user/{uid}"));
        std::fs::create_dir_all(&xdg).unwrap();
        chown(&xdg, uid);
        std::fs::set_permissions(&xdg, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        User {
            uid,
            home: PathBuf::from(format!("/home/{USER}")),
            xdg,
        }
    })
}

fn chown(p: &Path, uid: u32) {
    ok(
        Command::new("chown")
            .arg("-R")
            .arg(format!("{uid}:{uid}"))
            .arg(p),
        LIMIT,
        "chown",
    );
}

/// `prog args...` as the test user, with its environment (XDG_RUNTIME_DIR, HOME, USER).
fn as_user(prog: &str) -> Command {
    let u = user();
    let mut c = Command::new("runuser");
    c.args(["-u", USER, "--", "env"])
        .arg(format!("XDG_RUNTIME_DIR={}", u.xdg.display()))
        .arg(format!("HOME={}", u.home.display()))
        .arg(format!("USER={USER}"))
        .arg(prog);
    c
}

fn moat(args: &[&str]) -> Output {
    run_deadline(as_user(BIN).args(args), LIMIT, "moat-runtime (rootless)")
}

fn moat_ok(args: &[&str]) -> String {
    let o = moat(args);
    assert!(
        o.status.success(),
        "moat-runtime {args:?} failed ({})\nstdout: {}\nstderr: {}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout)
}

/// A bundle owned by the user, its config.json written by `moat-runtime spec --rootless` run as
/// the user, with `args` and no terminal.
fn rootless_bundle(args: &[&str]) -> Bundle {
    let mut b = Bundle::new(args);
    std::fs::remove_file(b.path().join("config.json")).unwrap();
    chown(b.path(), user().uid);
    moat_ok(&["spec", "--rootless", "--bundle", b.path().to_str().unwrap()]);
    b.spec = serde_json::from_slice(&std::fs::read(b.path().join("config.json")).unwrap()).unwrap();
    b.spec["process"]["terminal"] = json!(false);
    b.args(args);
    b
}

/// The default state dir of the user's containers (no `--root`: `$XDG_RUNTIME_DIR/moat`).
fn state_dir(id: &str) -> PathBuf {
    user().xdg.join("moat").join(id)
}

/// `exec` in container `cid` as the user; its stdout.
fn exec_out(cid: &str, cmd: &[&str]) -> String {
    let mut args = vec!["exec", cid];
    args.extend(cmd);
    moat_ok(&args)
}

/// Runs its closure when dropped (cleanup that also runs when an assertion fails).
struct Defer<F: FnMut()>(F);

impl<F: FnMut()> Drop for Defer<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

fn spec_args(b: &mut Bundle, args: &[&str], f: impl FnOnce(&mut Value)) {
    f(&mut b.spec);
    b.args(args);
}

#[test]
fn spec_rootless_run_matches_runc() {
    let script = "id; cat /proc/self/uid_map /proc/self/gid_map /proc/self/setgroups; ls /dev; \
                  ls /sys | head -3; echo done";
    let b = rootless_bundle(&["sh", "-c", script]);
    let cid = id("rl-run");
    let o = moat(&[
        "--debug",
        "run",
        "--bundle",
        b.path().to_str().unwrap(),
        &cid,
    ]);
    assert!(o.status.success(), "run: {}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.starts_with("uid=0(root) gid=0(root)"), "{out}");
    let words: Vec<&str> = out.split_whitespace().collect();
    let own = user().uid.to_string();
    assert!(words.windows(3).any(|w| w == ["0", &own, "1"]), "{out}");
    assert!(out.contains("deny") && out.ends_with("done\n"), "{out}");
    // Nothing is delegated on a stock host: the cgroup is skipped, and --debug says so.
    let err = text(&o.stderr);
    assert!(
        err.contains("rootless: cgroup") && err.contains("skipped"),
        "{err}"
    );
    assert!(!state_dir(&cid).exists(), "state left behind");
    // runc, as the same user on the same bundle, prints the same.
    if which("runc").is_none() {
        eprintln!("runc is not installed: the runc comparison is skipped");
        return;
    }
    let rroot = user().xdg.join(format!("runc-{cid}"));
    let r = run_deadline(
        as_user("runc").arg("--root").arg(&rroot).args([
            "run",
            "--bundle",
            b.path().to_str().unwrap(),
            &cid,
        ]),
        LIMIT,
        "runc run",
    );
    let _ = std::fs::remove_dir_all(&rroot);
    assert!(r.status.success(), "runc: {}", text(&r.stderr));
    assert_eq!(text(&r.stdout), out, "moat and runc differ");
}

#[test]
fn rootless_exec_and_delete_leave_nothing() {
    let b = rootless_bundle(&["sleep", "1000"]);
    let cid = id("rl-exec");
    let bundle = b.path().to_str().unwrap();
    moat_ok(&["run", "-d", "--bundle", bundle, &cid]);
    let _cleanup = Defer(|| {
        let _ = moat(&["delete", "--force", &cid]);
    });
    assert!(
        state_dir(&cid).exists(),
        "state not under $XDG_RUNTIME_DIR/moat"
    );
    let st: Value = serde_json::from_str(&moat_ok(&["state", &cid])).unwrap();
    assert_eq!(st["status"], "running");
    let pid = st["pid"].as_i64().unwrap() as i32;
    let out = exec_out(&cid, &["sh", "-c", "id -u; cat /proc/1/cmdline"]);
    assert!(out.starts_with("0\nsleep"), "{out:?}");
    // runc's list shows the owner; kill --all reaches the init without a cgroup.
    let list = moat_ok(&["list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with(&cid) && l.ends_with(USER)),
        "{list}"
    );
    // Without a cgroup, pause and ps fail with one error line (as runc does).
    for args in [&["pause", &cid][..], &["ps", &cid][..]] {
        let o = moat(args);
        let err = text(&o.stderr);
        assert!(
            !o.status.success() && err.starts_with("error:") && err.lines().count() == 1,
            "{args:?}: {err}"
        );
    }
    moat_ok(&["kill", "--all", &cid, "KILL"]);
    let start = std::time::Instant::now();
    while text(&moat(&["state", &cid]).stdout).contains("running") {
        assert!(start.elapsed() < LIMIT, "container did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    moat_ok(&["delete", &cid]);
    assert!(!state_dir(&cid).exists(), "state left behind");
    let start = std::time::Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(start.elapsed() < LIMIT, "init {pid} left behind");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!moat_ok(&["list", "-q"]).contains(&cid));
}

#[test]
fn rootless_limit_without_writable_cgroup_is_one_error() {
    let mut b = rootless_bundle(&["true"]);
    spec_args(&mut b, &["true"], |s| {
        s["linux"]["resources"] = json!({ "pids": { "limit": 10 } });
    });
    let cid = id("rl-limit");
    let o = moat(&["run", "--bundle", b.path().to_str().unwrap(), &cid]);
    let err = text(&o.stderr);
    assert!(!o.status.success(), "a limit without a cgroup was ignored");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error:") && err.contains("linux.resources.pids") && err.contains("uid"),
        "{err}"
    );
    assert!(!state_dir(&cid).exists(), "state left behind");
}

#[test]
fn rootless_without_user_namespace_is_one_error() {
    let mut b = rootless_bundle(&["true"]);
    spec_args(&mut b, &["true"], |s| {
        let ns = s["linux"]["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| n["type"] != "user");
        let linux = s["linux"].as_object_mut().unwrap();
        linux.remove("uidMappings");
        linux.remove("gidMappings");
    });
    let cid = id("rl-nouserns");
    let o = moat(&["run", "--bundle", b.path().to_str().unwrap(), &cid]);
    let err = text(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error:") && err.contains("linux.namespaces"),
        "{err}"
    );
    assert!(!state_dir(&cid).exists(), "state left behind");
}

#[test]
fn rootless_uses_a_delegated_cgroup() {
    // Delegate one subtree of the pids controller (v1 hierarchy, or the v2 tree) to the user.
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    if v2 {
        eprintln!("SKIP: rootless_uses_a_delegated_cgroup: the test delegates a v1 pids subtree");
        return;
    }
    let name = id("moat-rl-deleg");
    let top = PathBuf::from("/sys/fs/cgroup/pids").join(&name);
    std::fs::create_dir(&top).unwrap();
    chown(&top, user().uid);
    let mut b = rootless_bundle(&["sleep", "1000"]);
    spec_args(&mut b, &["sleep", "1000"], |s| {
        s["linux"]["resources"] = json!({ "pids": { "limit": 7 } });
        s["linux"]["cgroupsPath"] = json!(format!("/{name}/c"));
    });
    let cid = id("rl-deleg");
    let o = moat(&[
        "--debug",
        "run",
        "-d",
        "--bundle",
        b.path().to_str().unwrap(),
        &cid,
    ]);
    let _cleanup = Defer(|| {
        let _ = moat(&["delete", "--force", &cid]);
        let _ = std::fs::remove_dir(&top);
    });
    {
        assert!(o.status.success(), "run: {}", text(&o.stderr));
        let dir = top.join("c");
        assert_eq!(
            std::fs::read_to_string(dir.join("pids.max"))
                .unwrap()
                .trim(),
            "7"
        );
        let st: Value = serde_json::from_str(&moat_ok(&["state", &cid])).unwrap();
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        assert!(
            procs.contains(&st["pid"].to_string()),
            "init not in {procs}"
        );
        // exec joins it too.
        let out = exec_out(&cid, &["cat", "/proc/self/cgroup"]);
        assert!(out.contains("pids:/\n"), "{out}");
        moat_ok(&["delete", "--force", &cid]);
        assert!(!dir.exists(), "cgroup {} left behind", dir.display());
    }
}

/// `/dev/net/tun` with mode 0666 while alive (the previous mode restored on drop).
struct TunForEverybody(Option<u32>);

impl TunForEverybody {
    fn new() -> TunForEverybody {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let mode = std::fs::metadata("/dev/net/tun").unwrap().mode() & 0o7777;
        if mode & 0o006 == 0o006 {
            return TunForEverybody(None);
        }
        std::fs::set_permissions("/dev/net/tun", PermissionsExt::from_mode(0o666)).unwrap();
        TunForEverybody(Some(mode))
    }
}

impl Drop for TunForEverybody {
    fn drop(&mut self) {
        if let Some(mode) = self.0 {
            let _ = std::fs::set_permissions(
                "/dev/net/tun",
                std::os::unix::fs::PermissionsExt::from_mode(mode),
            );
        }
    }
}

/// Rootless podman (private storage under the user's home) with moat-runtime as its runtime.
#[test]
fn rootless_podman_run_logs_exec() {
    if !have_all(
        "rootless_podman_run_logs_exec",
        &["podman", "conmon", "newuidmap", "newgidmap"],
    ) {
        return;
    }
    let u = user();
    let dir = tempfile::Builder::new()
        .prefix("moat-rl-podman-")
        .tempdir_in(&u.home)
        .unwrap();
    let image = busybox_image(dir.path());
    chown(dir.path(), u.uid);
    let d = dir.path().to_path_buf();
    let podman = |args: &[&str]| -> Output {
        let mut c = as_user("podman");
        c.arg("--root")
            .arg(d.join("storage"))
            .arg("--runroot")
            .arg(d.join("run"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"])
            .arg("--runtime")
            .arg(BIN)
            .args(args);
        run_deadline(&mut c, Duration::from_secs(120), "podman (rootless)")
    };
    let check = |o: Output, what: &str| -> String {
        assert!(
            o.status.success(),
            "{what} failed ({})\nstdout: {}\nstderr: {}",
            o.status,
            text(&o.stdout),
            text(&o.stderr)
        );
        text(&o.stdout)
    };
    let _cleanup = Defer(|| {
        let _ = podman(&["rm", "-a", "-f", "-t", "0"]);
        // Rootless podman keeps a pause process (holding its user namespace) per --tmpdir; it
        // ignores SIGTERM.
        if let Ok(pid) = std::fs::read_to_string(d.join("tmp/pause.pid")) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        umount_below(&d);
    });
    {
        check(podman(&["load", "-i", image.to_str().unwrap()]), "load");
        // No CAP_SYS_RESOURCE here: ask for limits below the hard ones.
        let base = [
            "--network",
            "none",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ];
        let mut run = vec!["run", "--rm"];
        run.extend(base);
        run.extend([IMAGE, "sh", "-c", "echo hello-rootless; id -u"]);
        let out = check(podman(&run), "podman run --rm");
        assert_eq!(out, "hello-rootless\n0\n");

        let mut run = vec!["run", "-d", "--name", "rl1"];
        run.extend(base);
        run.extend([IMAGE, "sh", "-c", "echo started; exec sleep 1000"]);
        let cid = check(podman(&run), "podman run -d").trim().to_owned();
        assert!(
            state_dir(&cid).exists(),
            "moat state not in $XDG_RUNTIME_DIR/moat"
        );
        let start = std::time::Instant::now();
        while !text(&podman(&["logs", "rl1"]).stdout).contains("started") {
            assert!(
                start.elapsed() < LIMIT,
                "podman logs never showed the output"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = check(podman(&["exec", "rl1", "cat", "/proc/1/cmdline"]), "exec");
        assert!(out.starts_with("sleep"), "{out}");
        check(podman(&["rm", "-f", "-t", "0", "rl1"]), "podman rm -f");

        // podman's default rootless network (slirp4netns) needs nothing from the runtime, only
        // a /dev/net/tun the user may open: Debian's default mode is 0666; where it is not (this
        // development machine has 0600) it is made 0666 for this run and restored after.
        if which("slirp4netns").is_none() {
            eprintln!("SKIP: rootless podman with slirp4netns: slirp4netns is not installed");
        } else {
            let _tun = TunForEverybody::new();
            let mut run = vec!["run", "--rm"];
            run.extend(&base[2..]);
            run.extend([IMAGE, "cat", "/proc/net/dev"]);
            let out = check(podman(&run), "podman run (slirp4netns)");
            assert!(out.contains("tap0"), "{out}");
        }
        assert!(!state_dir(&cid).exists(), "moat state left behind");
        assert_no_process(&cid);
    }
}
