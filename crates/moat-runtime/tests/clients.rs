//! moat-runtime driven by the real clients of a runc-compatible runtime: podman (through conmon)
//! and containerd (through its runc shim, `containerd-shim-runc-v2`).
//!
//! Each test builds its own busybox image from the host's busybox-static (no network), keeps the
//! client's state in a private temporary directory, and is skipped (with a printed reason) only
//! when the client is not installed. Every child process runs under a deadline.

mod common;
use common::support::*;
use common::*;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

// ---------------------------------------------------------------------------------------------

/// A podman with private storage (`--root`, `--runroot`, `--tmpdir` in a temporary directory),
/// cgroupfs (the host may have no systemd), file events, and moat-runtime as its OCI runtime.
/// Podman passes no `--root` to the runtime, so moat keeps its state in its default root.
struct Podman {
    dir: tempfile::TempDir,
}

/// moat-runtime's default state root (podman does not pass `--root`).
const MOAT_DEFAULT_ROOT: &str = "/run/moat";

impl Podman {
    fn new() -> Podman {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("moat-podman-")
            .tempdir()
            .unwrap();
        let p = Podman { dir };
        let image = busybox_image(p.dir.path());
        ok(
            p.cmd().arg("load").arg("-i").arg(&image),
            Duration::from_secs(120),
            "podman load",
        );
        p
    }

    fn cmd(&self) -> Command {
        let d = self.dir.path();
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(d.join("storage"))
            .arg("--runroot")
            .arg(d.join("run"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"])
            .arg("--runtime")
            .arg(BIN);
        if debug() {
            c.args(["--log-level", "debug"]);
        }
        c
    }

    /// `podman run --rm` of `script` in a fresh container; returns (output, full container id).
    fn run_sh(&self, name: &str, script: &str) -> (Output, String) {
        let cidfile = self.dir.path().join(format!("{name}.cid"));
        let mut c = self.cmd();
        c.args(["run", "--rm", "--name", name, "--network", "none"])
            .arg("--cidfile")
            .arg(&cidfile);
        lower_ulimits(&mut c);
        c.args([IMAGE, "sh", "-c", script]);
        let o = run_deadline(&mut c, Duration::from_secs(120), "podman run");
        let cid = read_cid(&cidfile);
        (o, cid)
    }

    /// Nothing of the container is left: not in `podman ps -a`, no moat state, no cgroup, no
    /// conmon or runtime process.
    fn assert_gone(&self, name: &str, cid: &str) {
        let ps = ok(
            self.cmd()
                .args(["ps", "-a", "--format", "{{.ID}} {{.Names}}"]),
            Duration::from_secs(60),
            "podman ps -a",
        );
        assert!(ps.trim().is_empty(), "podman ps -a lists containers: {ps}");
        assert!(!cid.is_empty(), "podman wrote no container id for {name}");
        let state = Path::new(MOAT_DEFAULT_ROOT).join(cid);
        assert!(
            !state.exists(),
            "moat state {} left behind",
            state.display()
        );
        assert_no_cgroup(&format!("libpod_parent/libpod-{cid}"));
        assert_no_process(cid);
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Best effort: remove whatever a failed test left, then whatever is still mounted.
        for args in [&["rm", "-a", "-f"][..], &["rmi", "-a", "-f"][..]] {
            run_quiet(self.cmd().args(args), Duration::from_secs(60));
        }
        umount_below(self.dir.path());
    }
}

#[test]
fn podman_run_prints_and_cleans_up() {
    // Podman passes its default seccomp profile: moat compiles and installs it.
    if !have_all("podman_run_prints_and_cleans_up", &["podman", "conmon"]) {
        return;
    }
    let p = Podman::new();
    let name = id("moat-podman");
    // PID 1 is the shell itself (a private PID namespace); the trailing builtin keeps busybox sh
    // from exec'ing its last command in place.
    let script = "echo hello; cat /proc/1/cmdline; exit 0";
    let (o, cid) = p.run_sh(&name, script);
    assert!(
        o.status.success(),
        "podman run failed ({})\nstdout: {}\nstderr: {}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
    assert_eq!(
        text(&o.stdout),
        format!("hello\nsh\0-c\0{script}\0"),
        "stderr: {}",
        text(&o.stderr)
    );
    p.assert_gone(&name, &cid);
}

#[test]
fn podman_run_propagates_exit_code() {
    if !have_all("podman_run_propagates_exit_code", &["podman", "conmon"]) {
        return;
    }
    let p = Podman::new();
    let name = id("moat-podman-exit");
    let (o, cid) = p.run_sh(&name, "exit 3");
    assert_eq!(
        o.status.code(),
        Some(3),
        "podman run: {}\nstdout: {}\nstderr: {}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
    p.assert_gone(&name, &cid);
}
/// A podman network on its own bridge (10.231.77.0/24, on this machine only), removed on drop
/// with its bridge.
struct PodmanNet<'a> {
    p: &'a Podman,
    name: String,
    bridge: String,
}

impl<'a> PodmanNet<'a> {
    fn create(p: &'a Podman, name: &str) -> PodmanNet<'a> {
        let name = format!("{name}-net");
        ok(
            p.cmd()
                .args(["network", "create", "--subnet", "10.231.77.0/24", &name]),
            Duration::from_secs(30),
            "podman network create",
        );
        let bridge = ok(
            p.cmd().args([
                "network",
                "inspect",
                "--format",
                "{{.NetworkInterface}}",
                &name,
            ]),
            Duration::from_secs(30),
            "podman network inspect",
        )
        .trim()
        .to_owned();
        PodmanNet { p, name, bridge }
    }
}

impl Drop for PodmanNet<'_> {
    fn drop(&mut self) {
        run_quiet(
            self.p.cmd().args(["network", "rm", "-f", &self.name]),
            Duration::from_secs(30),
        );
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// `podman run -d -p` of a VM container (the annotation `io.moat.isolation=vm`): podman's network
/// (its namespace, veth and port mapping) reaches the guest, whose httpd answers from the host on
/// 127.0.0.1; `podman rm -f` leaves no moat state, tap or process.
#[test]
fn podman_vm_container_answers_on_a_published_port() {
    if !have_all(
        "podman_vm_container_answers_on_a_published_port",
        &["podman", "conmon"],
    ) {
        return;
    }
    let p = Podman::new();
    let name = id("moat-podman-vm");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cidfile = p.dir.path().join("vm.cid");
    let wrapper = vm_wrapper(&p);
    // A network of the test's own (podman's default one, 10.88.0.0/16 on cni-podman0, would
    // stay behind and collide with moat's bridge subnet).
    let net = PodmanNet::create(&p, &name);
    let mut c = p.cmd();
    // The last --runtime wins.
    c.arg("--runtime")
        .arg(&wrapper)
        .args(["run", "-d", "--name", &name, "--network", &net.name])
        .args(["--annotation", "io.moat.isolation=vm"])
        .arg("-p")
        .arg(format!("127.0.0.1:{port}:80"))
        .arg("--cidfile")
        .arg(&cidfile);
    lower_ulimits(&mut c);
    c.args([
        IMAGE,
        "sh",
        "-c",
        "mkdir -p /tmp/www && echo hello-podman-vm > /tmp/www/index.html && \
         exec httpd -f -p 80 -h /tmp/www",
    ]);
    let o = run_deadline(&mut c, Duration::from_secs(120), "podman run -d");
    let cid = read_cid(&cidfile);
    assert!(
        o.status.success(),
        "podman run -d: {}\nstdout: {}\nstderr: {}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let body = loop {
        let r = (|| -> std::io::Result<String> {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut b = String::new();
            s.read_to_string(&mut b)?;
            Ok(b)
        })();
        match r {
            Ok(b) if b.contains("hello-podman-vm") => break b,
            r if std::time::Instant::now() > deadline => {
                panic!("no answer on 127.0.0.1:{port}: {r:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    assert!(body.contains(" 200 "), "{body}");
    ok(
        p.cmd().args(["rm", "-f", &name]),
        Duration::from_secs(60),
        "podman rm -f",
    );
    p.assert_gone(&name, &cid);
    let links = ok(
        Command::new("ip").arg("link"),
        Duration::from_secs(10),
        "ip link",
    );
    assert!(!links.contains("_moat"), "a tap is left: {links}");
}

#[path = "support/vm_agent.rs"]
mod vm_agent;

/// conmon does not pass podman's environment on: a wrapper of moat-runtime names the guest agent.
fn vm_wrapper(p: &Podman) -> std::path::PathBuf {
    let wrapper = p.dir.path().join("moat-runtime-vm");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nMOAT_AGENT_BIN={} exec {BIN} \"$@\"\n",
            vm_agent::agent().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    wrapper
}

/// `podman run -it` of a VM container: conmon gets the host pty master over its console socket
/// (as from runc), the process sees the guest's pts with conmon's size, and typed input is
/// answered. `podman exec -it` (conmon runs `exec -d -t --console-socket --pid-file`): the pid
/// is the relay's, which exits with the process's status. Nothing is left after.
#[test]
fn podman_vm_container_with_a_terminal() {
    if !have_all(
        "podman_vm_container_with_a_terminal",
        &["podman", "conmon", "script"],
    ) {
        return;
    }
    let p = Podman::new();
    let name = id("moat-podman-vmtty");
    let cidfile = p.dir.path().join("vmtty.cid");
    let wrapper = vm_wrapper(&p);
    let mut c = p.cmd();
    c.arg("--runtime")
        .arg(&wrapper)
        .args(["run", "--rm", "-it", "--name", &name, "--network", "none"])
        .args(["--annotation", "io.moat.isolation=vm"])
        .arg("--cidfile")
        .arg(&cidfile);
    lower_ulimits(&mut c);
    c.args([IMAGE, "sh"]);
    let line: Vec<String> = std::iter::once(c.get_program())
        .chain(c.get_args())
        .map(|a| format!("'{}'", a.to_string_lossy()))
        .collect();
    let o = run_deadline(
        Command::new("sh").args([
            "-c",
            &format!(
                "(sleep 15; printf 'tty; stty size; echo typed-$((6*7))\\n'; sleep 3; \
                 printf 'exit\\n'; sleep 5) | script -qec \"stty rows 33 cols 77; {}\" /dev/null",
                line.join(" ")
            ),
        ]),
        Duration::from_secs(180),
        "podman run -it (VM)",
    );
    let out = text(&o.stdout).replace('\r', "");
    assert!(
        out.contains("typed-42\n"),
        "{out}\nstderr: {}",
        text(&o.stderr)
    );
    assert!(out.contains("/dev/pts/0\n"), "{out}");
    assert!(out.contains("33 77\n"), "{out}");
    let cid = read_cid(&cidfile);
    p.assert_gone(&name, &cid);

    let name = id("moat-podman-vmexec");
    let cidfile = p.dir.path().join("vmexec.cid");
    let mut c = p.cmd();
    c.arg("--runtime")
        .arg(&wrapper)
        .args(["run", "-d", "--name", &name, "--network", "none"])
        .args(["--annotation", "io.moat.isolation=vm"])
        .arg("--cidfile")
        .arg(&cidfile);
    lower_ulimits(&mut c);
    c.args([IMAGE, "sleep", "600"]);
    ok(&mut c, Duration::from_secs(120), "podman run -d (VM)");
    let mut c = p.cmd();
    c.arg("--runtime").arg(&wrapper).args([
        "exec",
        "-it",
        &name,
        "sh",
        "-c",
        "tty; stty size; exit 4",
    ]);
    let line: Vec<String> = std::iter::once(c.get_program())
        .chain(c.get_args())
        .map(|a| format!("'{}'", a.to_string_lossy()))
        .collect();
    let o = run_deadline(
        Command::new("script").args([
            "-qec",
            &format!("stty rows 20 cols 60; {}", line.join(" ")),
            "/dev/null",
        ]),
        Duration::from_secs(120),
        "podman exec -it (VM)",
    );
    let out = text(&o.stdout).replace('\r', "");
    assert_eq!(
        o.status.code(),
        Some(4),
        "{out}\nstderr: {}",
        text(&o.stderr)
    );
    assert!(out.contains("/dev/pts/"), "{out}");
    ok(
        p.cmd().args(["rm", "-f", &name]),
        Duration::from_secs(60),
        "podman rm -f",
    );
    let cid = read_cid(&cidfile);
    p.assert_gone(&name, &cid);
}

fn containerd_with_image(test: &str) -> Option<(Containerd, tempfile::TempDir)> {
    if !have_all(test, &["containerd", "ctr", "containerd-shim-runc-v2"]) {
        return None;
    }
    let ns = id("moat-test");
    let cd = Containerd::start(&ns);
    let work = tempfile::Builder::new()
        .prefix("moat-ctr-image-")
        .tempdir()
        .unwrap();
    cd.import(&busybox_image(work.path()));
    Some((cd, work))
}

#[test]
fn containerd_runc_shim_runs_and_cleans_up() {
    let Some((cd, _work)) = containerd_with_image("containerd_runc_shim_runs_and_cleans_up") else {
        return;
    };
    let cid = id("moat-ctr");
    let o = cd.run_sh(
        &["--runtime", "io.containerd.runc.v2", "--runc-binary", BIN],
        &cid,
        "echo from-containerd",
    );
    assert!(
        o.status.success(),
        "ctr run failed ({})\nstdout: {}\nstderr: {}\ncontainerd log:\n{}",
        o.status,
        text(&o.stdout),
        text(&o.stderr),
        cd.log()
    );
    assert_eq!(
        text(&o.stdout),
        "from-containerd\n",
        "stderr: {}",
        text(&o.stderr)
    );
    cd.assert_gone(&cid);
}

#[test]
fn containerd_runc_shim_propagates_exit_code() {
    let Some((cd, _work)) = containerd_with_image("containerd_runc_shim_propagates_exit_code")
    else {
        return;
    };
    let cid = id("moat-ctr-exit");
    let o = cd.run_sh(
        &["--runtime", "io.containerd.runc.v2", "--runc-binary", BIN],
        &cid,
        "exit 5",
    );
    assert_eq!(
        o.status.code(),
        Some(5),
        "ctr run: {}\nstdout: {}\nstderr: {}\ncontainerd log:\n{}",
        o.status,
        text(&o.stdout),
        text(&o.stderr),
        cd.log()
    );
    cd.assert_gone(&cid);
}

/// Podman asks for RLIMIT_NOFILE and RLIMIT_NPROC of 1048576 when run as root; raising a hard
/// limit needs CAP_SYS_RESOURCE, which some sandboxes (and CI containers) drop — runc fails the
/// same way there. Ask for limits below ours instead (lowering is always allowed; RLIMIT_NPROC
/// does not apply to uid 0).
fn lower_ulimits(c: &mut Command) {
    if !has_cap_sys_resource() {
        c.args([
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ]);
    }
}

/// The container id podman wrote to `cidfile` (empty when it wrote none).
fn read_cid(cidfile: &std::path::Path) -> String {
    std::fs::read_to_string(cidfile)
        .unwrap_or_default()
        .trim()
        .to_owned()
}
