//! A private dockerd for the Docker tests: its own `--data-root`, `--exec-root`, `--pidfile`,
//! socket, trust key and cgroup parent in a temporary directory, moat-runtime registered as the
//! runtime `moat` in its daemon.json, iptables and the default bridge off. Stopped on drop, with
//! every container, network, bridge, mount, cgroup and process it left removed.
//!
//! Why no iptables: `-p` is served by Docker's userland proxy (`docker-proxy`), which listens on
//! the host and connects to the container's address over a bridge network; the test creates its
//! own bridge network (unique bridge name and subnet) so it never touches `docker0` or the host's
//! firewall, and traffic stays on 127.0.0.1 and that bridge.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::support::*;

/// The image the tests run (imported from a busybox-static tarball, no registry).
pub const DOCKER_IMAGE: &str = "moat-busybox:test";
const DOCKERD: &str = "/usr/sbin/dockerd";
/// The docker.io client (a newer `docker` elsewhere on PATH may not speak to dockerd 20.10).
const DOCKER: &str = "/usr/bin/docker";

/// Make sure docker.io is installed (installing it with apt-get when missing, as CI does); the
/// reason when it cannot be.
pub fn ensure_docker() -> Result<(), String> {
    let have = || {
        [DOCKERD, DOCKER, "/usr/sbin/docker-proxy"]
            .iter()
            .all(|p| Path::new(p).exists())
    };
    if have() {
        return Ok(());
    }
    let o = run_deadline(
        Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "docker.io",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive"),
        Duration::from_secs(600),
        "apt-get install docker.io",
    );
    if have() {
        Ok(())
    } else {
        Err(format!(
            "docker.io is not installed and apt-get install docker.io failed ({}): {}",
            o.status,
            text(&o.stderr).lines().last().unwrap_or_default()
        ))
    }
}

pub struct Dockerd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// The cgroup parent of every container (`/<name>`), ours to remove.
    pub cgroup_parent: String,
    /// Bridge networks the tests created: (network name, bridge device).
    pub networks: std::cell::RefCell<Vec<(String, String)>>,
    /// Full ids of the containers the tests created.
    pub ids: std::cell::RefCell<Vec<String>>,
    /// Whether /run/docker (dockerd's fixed plugin directory) existed before we started.
    had_run_docker: bool,
}

impl Dockerd {
    /// Start dockerd with `runtime` (moat-runtime's path) as `moat`, wait for its socket and
    /// import the busybox image.
    pub fn start(runtime: &str) -> Dockerd {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("moat-dockerd-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let cgroup_parent = format!("moat-docker-{}", std::process::id());
        let had_run_docker = Path::new("/run/docker").exists();
        let config = json!({
            "runtimes": {"moat": {"path": runtime}},
            "cgroup-parent": format!("/{cgroup_parent}"),
            "deprecated-key-path": d.join("key.json"),
            "storage-driver": "overlay2",
            "log-level": if debug() { "debug" } else { "warn" },
        });
        std::fs::write(d.join("daemon.json"), config.to_string()).unwrap();
        let log = std::fs::File::create(d.join("dockerd.log")).unwrap();
        let child = Command::new(DOCKERD)
            .arg("--config-file")
            .arg(d.join("daemon.json"))
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", d.join("docker.sock").display()))
            .args(["--iptables=false", "--ip-masq=false", "--bridge=none"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("spawn dockerd");
        let mut dk = Dockerd {
            dir,
            child: Some(child),
            cgroup_parent,
            networks: Default::default(),
            ids: Default::default(),
            had_run_docker,
        };
        let start = Instant::now();
        loop {
            if let Some(st) = dk.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("dockerd exited ({st}) before serving:\n{}", dk.log());
            }
            if dk.sock().exists()
                && run_deadline(dk.cmd().arg("version"), Duration::from_secs(10), "docker")
                    .status
                    .success()
            {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "dockerd did not serve in 60 s:\n{}",
                dk.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        dk.import_image();
        dk
    }

    fn import_image(&self) {
        let rootfs = self.path().join("image-rootfs");
        busybox_rootfs(&rootfs);
        let tarball = self.path().join("busybox.tar");
        ok(
            Command::new("tar")
                .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
                .arg(&rootfs)
                .arg("-cf")
                .arg(&tarball)
                .arg("."),
            Duration::from_secs(60),
            "tar the image",
        );
        ok(
            self.cmd()
                .args(["import", "-c", "CMD [\"sh\"]"])
                .arg(&tarball)
                .arg(DOCKER_IMAGE),
            Duration::from_secs(60),
            "docker import",
        );
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The `--root` Docker 20.10 passes to every runc-compatible runtime (moat included).
    pub fn runtime_root(&self) -> PathBuf {
        self.path().join("exec/runtime-runc/moby")
    }

    pub fn sock(&self) -> PathBuf {
        self.path().join("docker.sock")
    }

    /// The last lines of dockerd's log, for failure messages.
    pub fn log(&self) -> String {
        let all = std::fs::read_to_string(self.path().join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = all.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// A `docker` command talking to this daemon.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(DOCKER);
        c.arg("-H").arg(format!("unix://{}", self.sock().display()));
        c
    }

    /// Run `docker ARGS` within 60 s.
    pub fn out(&self, args: &[&str]) -> Output {
        run_deadline(
            self.cmd().args(args),
            Duration::from_secs(60),
            &format!("docker {}", args.first().copied().unwrap_or_default()),
        )
    }

    /// Run `docker ARGS`, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.out(args);
        assert!(
            o.status.success(),
            "docker {args:?} failed ({})\nstdout: {}\nstderr: {}\ndockerd log:\n{}",
            o.status,
            text(&o.stdout),
            text(&o.stderr),
            self.log()
        );
        text(&o.stdout)
    }

    /// `docker run -d` with `args` (runtime flags, image and command); the full container id.
    pub fn run_d(&self, args: &[&str]) -> String {
        let mut all = vec!["run", "-d"];
        all.extend_from_slice(args);
        let id = self.ok(&all).trim().to_owned();
        self.ids.borrow_mut().push(id.clone());
        id
    }

    /// A cgroup file of container `id`: `v1` (controller, file) on a v1 or hybrid host, `v2`
    /// file on a pure cgroup2 host.
    pub fn cgroup_file(&self, id: &str, v1: (&str, &str), v2: &str) -> String {
        let rel = format!("{}/{id}", self.cgroup_parent);
        let p = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            Path::new("/sys/fs/cgroup").join(rel).join(v2)
        } else {
            Path::new("/sys/fs/cgroup").join(v1.0).join(rel).join(v1.1)
        };
        std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
            .trim()
            .to_owned()
    }

    /// Nothing of the containers the tests made is left: no container, no moat state, no
    /// cgroup, no process (shim or container) under our exec root.
    pub fn assert_clean(&self) {
        let ps = self.ok(&["ps", "-aq"]);
        assert!(ps.trim().is_empty(), "containers left: {ps}");
        for id in self.ids.borrow().iter() {
            let state = self.runtime_root().join(id);
            assert!(!state.exists(), "runtime state {} left", state.display());
            assert_no_cgroup(&format!("{}/{id}", self.cgroup_parent));
            assert_no_process(id);
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let quiet = |c: &mut Command| run_quiet(c, Duration::from_secs(30));
        if self.child.is_some() {
            // Every container of this daemon, also those a failed `docker run` left created.
            let docker = format!("{DOCKER} -H unix://{}", self.sock().display());
            quiet(Command::new("sh").arg("-c").arg(format!(
                "{docker} ps -aq --no-trunc | xargs -r {docker} rm -f"
            )));
            for id in self.ids.borrow().iter() {
                quiet(self.cmd().args(["rm", "-f", id]));
            }
            for (net, _) in self.networks.borrow().iter() {
                quiet(self.cmd().args(["network", "rm", net]));
            }
        }
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let start = Instant::now();
            while child.try_wait().ok().flatten().is_none() {
                if start.elapsed() > Duration::from_secs(20) {
                    kill_group(&mut child);
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // dockerd's containerd and the shims it started, if they outlived it.
        let exec_root = self.path().join("exec").display().to_string();
        for pid in pids_with_cmdline(&exec_root) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        for (_, bridge) in self.networks.borrow().iter() {
            if Path::new("/sys/class/net").join(bridge).exists() {
                run_quiet(
                    Command::new("ip").args(["link", "del", bridge]),
                    Duration::from_secs(10),
                );
            }
        }
        // Container processes outlive a killed shim: kill what is left in our cgroup parent
        // (thawed first, a frozen task cannot die), then remove the cgroups, deepest first.
        let parents = cgroup_paths(&self.cgroup_parent);
        let mut dirs: Vec<PathBuf> = parents.iter().flat_map(|p| subdirs(p)).collect();
        for d in &dirs {
            let _ = std::fs::write(d.join("freezer.state"), "THAWED");
            let _ = std::fs::write(d.join("cgroup.freeze"), "0");
            let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        umount_below(self.dir.path());
        // A killed shim leaves its socket, named by the hash of containerd's address, the
        // namespace and the container id (containerd 1.6's shim.SocketAddress).
        let sock = self.path().join("exec/containerd/containerd.sock");
        for id in self.ids.borrow().iter() {
            let key = self.path().join("shim-key");
            let _ = std::fs::write(&key, format!("{}/moby/{id}", sock.display()));
            // Not `sha256_file`: nothing in a drop may panic.
            let Ok(o) = Command::new("sha256sum").arg(&key).output() else {
                continue;
            };
            if let Some(hash) = text(&o.stdout).split_whitespace().next() {
                let _ = std::fs::remove_file(Path::new("/run/containerd/s").join(hash));
            }
        }
        if !self.had_run_docker {
            let _ = std::fs::remove_dir("/run/docker/plugins");
            let _ = std::fs::remove_dir("/run/docker");
        }
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs.iter().chain(&parents) {
            for _ in 0..50 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Every directory below `dir` (not `dir` itself).
fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(subdirs(&e.path()));
            out.push(e.path());
        }
    }
    out
}
