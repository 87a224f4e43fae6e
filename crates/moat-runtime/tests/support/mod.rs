//! Helpers shared by the tests that drive real clients (podman, containerd): bounded child
//! processes, a busybox image built without network, and a private containerd.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::json;

pub const IMAGE: &str = "localhost/moat-busybox:test";
/// Set to get the clients' debug logs (`--log-level debug`) in the failure messages.
pub const DEBUG_ENV: &str = "MOAT_CLIENTS_DEBUG";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The path of `name` on PATH, if installed.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Skip the test (print why) unless all of `bins` are installed.
pub fn have_all(test: &str, bins: &[&str]) -> bool {
    for b in bins {
        if which(b).is_none() {
            eprintln!("SKIP: {test}: {b} is not installed");
            return false;
        }
    }
    true
}

pub fn debug() -> bool {
    std::env::var_os(DEBUG_ENV).is_some()
}

/// Run `cmd` to completion within `limit`, its stdout and stderr going to files (a pipe could be
/// inherited by a daemon the command spawns — conmon, a shim — and never reach end of file). On
/// timeout the whole process group is killed and the test fails with what was printed so far.
pub fn run_deadline(cmd: &mut Command, limit: Duration, what: &str) -> Output {
    let out = tempfile::NamedTempFile::new().unwrap();
    let err = tempfile::NamedTempFile::new().unwrap();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.reopen().unwrap())
        .stderr(err.reopen().unwrap())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: spawn {cmd:?}: {e}"));
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > limit {
            kill_group(&mut child);
            panic!(
                "{what}: {cmd:?} did not finish within {limit:?}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&std::fs::read(out.path()).unwrap()),
                String::from_utf8_lossy(&std::fs::read(err.path()).unwrap()),
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: std::fs::read(out.path()).unwrap(),
        stderr: std::fs::read(err.path()).unwrap(),
    }
}

/// Best-effort cleanup command: no stdio, its own process group, killed (with its group) when
/// it is still running after `limit`; its status is ignored.
pub fn run_quiet(cmd: &mut Command, limit: Duration) {
    if let Ok(mut child) = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
    {
        let start = Instant::now();
        while child.try_wait().ok().flatten().is_none() {
            if start.elapsed() > limit {
                kill_group(&mut child);
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub fn kill_group(child: &mut Child) {
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Run a command that must succeed within `limit`; returns its stdout.
pub fn ok(cmd: &mut Command, limit: Duration, what: &str) -> String {
    let o = run_deadline(cmd, limit, what);
    assert!(
        o.status.success(),
        "{what}: {cmd:?} failed ({})\nstdout: {}\nstderr: {}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout)
}

/// Does this process hold CAP_SYS_RESOURCE in its effective set?
pub fn has_cap_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap_or(0);
    eff & (1 << 24) != 0 // CAP_SYS_RESOURCE
}

/// Cgroup directories at `rel` (relative to the cgroup root) on v2, or in every v1 hierarchy.
pub fn cgroup_paths(rel: &str) -> Vec<PathBuf> {
    let rel = rel.trim_start_matches('/');
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        return vec![Path::new("/sys/fs/cgroup").join(rel)];
    }
    std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|e| e.path().join(rel))
        .collect()
}

pub fn assert_no_cgroup(rel: &str) {
    for d in cgroup_paths(rel) {
        assert!(!d.exists(), "cgroup {} left behind", d.display());
    }
}

/// Wait (up to 10 s) until no process's command line mentions `needle`.
pub fn assert_no_process(needle: &str) {
    let start = Instant::now();
    loop {
        let pids = pids_with_cmdline(needle);
        if pids.is_empty() {
            return;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let cmdlines: Vec<String> = pids
                .iter()
                .map(|p| {
                    std::fs::read(format!("/proc/{p}/cmdline"))
                        .map(|c| text(&c).replace('\0', " "))
                        .unwrap_or_default()
                })
                .collect();
            panic!("processes mentioning {needle} left behind: {pids:?} {cmdlines:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Detach every mount at or below `dir` (deepest first), so the directory can be removed even
/// when a client died with its storage mounted.
pub fn umount_below(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
}

pub fn sha256_file(p: &Path) -> String {
    let out = ok(
        Command::new("sha256sum").arg(p),
        Duration::from_secs(60),
        "sha256sum",
    );
    out.split_whitespace().next().unwrap().to_owned()
}

/// A busybox-static root filesystem at `rootfs`: the usual top directories, busybox with a link
/// per applet, and an /etc/passwd and /etc/group with root and nobody.
pub fn busybox_rootfs(rootfs: &Path) {
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "root", "run"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy(busybox(), rootfs.join("bin/busybox")).unwrap();
    let list = Command::new(busybox()).arg("--list").output().unwrap();
    for applet in text(&list.stdout).lines() {
        // The list names busybox itself: never replace the binary by a link to itself.
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
        }
    }
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
}

/// Build a docker-archive tarball (`docker save` format, which both `podman load` and
/// `ctr image import` accept) of a one-layer busybox image named [`IMAGE`]; returns its path.
pub fn busybox_image(dir: &Path) -> PathBuf {
    busybox_image_with(dir, |_| {})
}

/// [`busybox_image`] with `add` run on its rootfs before it is packed.
pub fn busybox_image_with(dir: &Path, add: impl FnOnce(&Path)) -> PathBuf {
    let rootfs = dir.join("rootfs");
    busybox_rootfs(&rootfs);
    add(&rootfs);

    let img = dir.join("image");
    std::fs::create_dir_all(&img).unwrap();
    ok(
        Command::new("tar")
            .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
            .arg(&rootfs)
            .arg("-cf")
            .arg(img.join("layer.tar"))
            .arg("."),
        Duration::from_secs(60),
        "tar the layer",
    );
    let tarball = dir.join("busybox-image.tar");
    docker_archive(
        &img,
        IMAGE,
        json!({
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["sh"],
        }),
        &tarball,
    );
    tarball
}

/// Turn `img`, a directory holding one `layer.tar`, into a docker-archive tarball at `tarball`
/// for image `tag` whose config section is `config`.
pub fn docker_archive(img: &Path, tag: &str, config: serde_json::Value, tarball: &Path) {
    let layer = sha256_file(&img.join("layer.tar"));
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        a => a,
    };
    let config = json!({
        "architecture": arch,
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer}")]},
        "history": [{"created_by": "moat tests"}],
    });
    let cfg_tmp = img.join("config.json");
    std::fs::write(&cfg_tmp, serde_json::to_vec(&config).unwrap()).unwrap();
    let cfg_name = format!("{}.json", sha256_file(&cfg_tmp));
    std::fs::rename(&cfg_tmp, img.join(&cfg_name)).unwrap();
    let manifest = json!([{"Config": cfg_name, "RepoTags": [tag], "Layers": ["layer.tar"]}]);
    std::fs::write(
        img.join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    ok(
        Command::new("tar")
            .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
            .arg(img)
            .arg("-cf")
            .arg(tarball)
            .arg("."),
        Duration::from_secs(60),
        "tar the image",
    );
}

// ---------------------------------------------------------------------------------------------
// podman

// ---------------------------------------------------------------------------------------------
// containerd (runc shim)
// ---------------------------------------------------------------------------------------------

/// The directory under which containerd's runc shim keeps runtime state: it passes
/// `--root <RUNC_ROOT>/<namespace>` to the runtime.
pub const RUNC_ROOT: &str = "/run/containerd/runc";

/// A private containerd: its own config, root, state and sockets in a temporary directory, the
/// CRI plugin disabled unless asked for, a namespace unique to the test. Stopped (and its
/// leftovers removed) on drop.
pub struct Containerd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub ns: String,
    /// Container ids the test created (killed and removed on drop if still there).
    pub ids: std::cell::RefCell<Vec<String>>,
    /// containerd's PATH, when the test puts a shim directory first.
    path: Option<String>,
}

impl Containerd {
    pub fn start(ns: &str) -> Containerd {
        Self::launch(ns, None, None)
    }

    /// Start containerd with `dir` first on its PATH (where it looks for shim binaries).
    pub fn start_with_path(ns: &str, shim_dir: Option<&Path>) -> Containerd {
        Self::launch(ns, shim_dir, None)
    }

    /// Start containerd with `shim_dir` first on its PATH and, when `cri` is given, the CRI
    /// plugin enabled with that TOML appended to the config (`{dir}` in it is replaced by the
    /// containerd's temporary directory). Waits until containerd has booted; a CRI plugin that
    /// failed to load fails here with containerd's reason.
    pub fn launch(ns: &str, shim_dir: Option<&Path>, cri: Option<&str>) -> Containerd {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("moat-containerd-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
{disabled}

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  level = "{level}"

{cri}
"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = d.join("containerd.sock").display(),
            level = if debug() { "debug" } else { "info" },
            disabled = if cri.is_some() {
                ""
            } else {
                r#"disabled_plugins = ["io.containerd.grpc.v1.cri"]"#
            },
            cri = cri
                .unwrap_or_default()
                .replace("{dir}", &d.display().to_string()),
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        let path = shim_dir.map(|extra| {
            let path = std::env::var("PATH").unwrap_or_default();
            format!("{}:{path}", extra.display())
        });
        let mut c = Containerd {
            dir,
            child: None,
            ns: ns.to_owned(),
            ids: Default::default(),
            path,
        };
        c.spawn(cri.is_some());
        c
    }

    /// Start containerd on the configuration in our directory, its log appended to, and wait
    /// until it serves (and, with the CRI plugin, has booted).
    fn spawn(&mut self, cri: bool) {
        let d = self.dir.path();
        let booted_before = std::fs::read_to_string(self.log_path())
            .unwrap_or_default()
            .matches("successfully booted")
            .count();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("containerd.log"))
            .unwrap();
        let mut cmd = Command::new("containerd");
        if let Some(path) = &self.path {
            cmd.env("PATH", path);
        }
        let child = cmd
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("spawn containerd");
        self.child = Some(child);
        let c = self;
        let sock = c.sock();
        let start = Instant::now();
        while !sock.exists() {
            if let Some(st) = c.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("containerd exited ({st}) before serving:\n{}", c.log());
            }
            if start.elapsed() > Duration::from_secs(30) {
                panic!(
                    "containerd did not create {} in 30 s:\n{}",
                    sock.display(),
                    c.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if cri {
            // containerd serves even when a plugin fails to load: make a broken CRI
            // configuration fail here, with containerd's reason.
            while std::fs::read_to_string(c.log_path())
                .unwrap_or_default()
                .matches("successfully booted")
                .count()
                <= booted_before
            {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "containerd did not finish booting in 30 s:\n{}",
                    c.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            let full = std::fs::read_to_string(c.log_path()).unwrap_or_default();
            if let Some(l) = full
                .lines()
                .find(|l| l.contains("failed to load plugin io.containerd.grpc.v1.cri"))
            {
                panic!("containerd's CRI plugin did not load: {l}");
            }
        }
    }

    /// Stop containerd (SIGTERM, as a service manager does) and start it again on the same
    /// configuration, root and state: the shims live on and containerd reconnects to them.
    pub fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = child.wait();
        }
        let cri = !std::fs::read_to_string(self.dir.path().join("config.toml"))
            .unwrap_or_default()
            .contains("disabled_plugins");
        let _ = std::fs::remove_file(self.sock());
        self.spawn(cri);
    }

    /// containerd's temporary directory (root, state, sockets, log).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("containerd.log")
    }

    pub fn sock(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// The last lines of containerd's log, for failure messages.
    pub fn log(&self) -> String {
        let all = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = all.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(self.sock())
            .args(["--namespace", &self.ns]);
        c
    }

    pub fn import(&self, tarball: &Path) {
        let o = run_deadline(
            self.ctr().args(["image", "import"]).arg(tarball),
            Duration::from_secs(120),
            "ctr image import",
        );
        assert!(
            o.status.success(),
            "ctr -n {} image import failed ({})\nstdout: {}\nstderr: {}\ncontainerd log:\n{}",
            self.ns,
            o.status,
            text(&o.stdout),
            text(&o.stderr),
            self.log()
        );
    }

    /// `ctr run --rm` with the given runtime flags (e.g. `--runtime io.containerd.runc.v2
    /// --runc-binary PATH`).
    pub fn run_sh(&self, runtime: &[&str], id: &str, script: &str) -> Output {
        self.ids.borrow_mut().push(id.to_owned());
        run_deadline(
            self.ctr()
                .args(["run", "--rm"])
                .args(runtime)
                .args([IMAGE, id, "sh", "-c", script]),
            Duration::from_secs(120),
            "ctr run",
        )
    }

    /// Nothing of container `id` is left: no task, no container, no runtime state under the
    /// shim's root for our namespace, no cgroup (ctr's default cgroupsPath is /<ns>/<id>), no shim.
    pub fn assert_gone(&self, id: &str) {
        let tasks = ok(
            self.ctr().args(["task", "ls", "-q"]),
            Duration::from_secs(30),
            "ctr task ls",
        );
        assert!(
            tasks.trim().is_empty(),
            "tasks left: {tasks}\n{}",
            self.log()
        );
        let ctrs = ok(
            self.ctr().args(["container", "ls", "-q"]),
            Duration::from_secs(30),
            "ctr container ls",
        );
        assert!(
            ctrs.trim().is_empty(),
            "containers left: {ctrs}\n{}",
            self.log()
        );
        let root = Path::new(RUNC_ROOT).join(&self.ns);
        if root.exists() {
            let left: Vec<_> = std::fs::read_dir(&root)
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .collect();
            assert!(
                left.is_empty(),
                "runtime state left in {}: {left:?}",
                root.display()
            );
        }
        assert_no_cgroup(&format!("{}/{id}", self.ns));
        assert_no_process(&format!("-address {}", self.sock().display()));
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let quiet = |c: &mut Command| run_quiet(c, Duration::from_secs(20));
        if self.child.is_some() {
            for id in self.ids.borrow().iter() {
                quiet(self.ctr().args(["task", "kill", "-s", "SIGKILL", id]));
                quiet(self.ctr().args(["task", "rm", "-f", id]));
                quiet(self.ctr().args(["container", "rm", id]));
            }
        }
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let start = Instant::now();
            while child.try_wait().ok().flatten().is_none() {
                if start.elapsed() > Duration::from_secs(10) {
                    kill_group(&mut child);
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // A shim outlives containerd by design: kill any of ours that is left.
        for pid in pids_with_cmdline(&format!("-address {}", self.sock().display())) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        umount_below(self.dir.path());
        // The runtime root of our namespace and the namespace's parent cgroup (which the runtime
        // does not own, like runc) are ours to remove once empty.
        let _ = std::fs::remove_dir(Path::new(RUNC_ROOT).join(&self.ns));
        for d in cgroup_paths(&self.ns) {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Where the tests take busybox from (Debian's busybox-static).
pub fn busybox() -> PathBuf {
    let p =
        PathBuf::from(std::env::var("MOAT_TEST_BUSYBOX").unwrap_or_else(|_| "/bin/busybox".into()));
    assert!(
        p.exists(),
        "{} is missing: install busybox-static (the tests need it)",
        p.display()
    );
    p
}

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests create real containers and must run as root"
    );
}

/// A unique container id for this test process.
pub fn id(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Pids whose command line mentions `needle` (to find stray processes).
pub fn pids_with_cmdline(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            if String::from_utf8_lossy(&c)
                .replace('\0', " ")
                .contains(needle)
            {
                out.push(pid);
            }
        }
    }
    out
}
