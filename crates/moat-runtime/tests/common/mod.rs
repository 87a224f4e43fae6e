//! Shared helpers of the integration tests: a busybox-static bundle built from scratch, a private
//! runtime root per test, unique ids, and the "nothing left behind" check.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

#[path = "../support/mod.rs"]
pub mod support;
#[allow(unused_imports)]
pub use support::{busybox, id, pids_with_cmdline, require_root};

pub const BIN: &str = env!("CARGO_BIN_EXE_moat-runtime");

/// A bundle: `rootfs/` with busybox and its applets, and a config.json made from the runtime's
/// default spec with `terminal` off and the given args.
pub struct Bundle {
    pub dir: tempfile::TempDir,
    pub spec: Value,
}

impl Bundle {
    pub fn new(args: &[&str]) -> Bundle {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("moat-bundle-")
            .tempdir()
            .unwrap();
        support::busybox_rootfs(&dir.path().join("rootfs"));
        let out = Command::new(BIN)
            .args(["spec", "--bundle"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "spec: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut spec: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap())
                .unwrap();
        spec["process"]["terminal"] = json!(false);
        spec["process"]["args"] = json!(args);
        // Tests write into the rootfs unless they ask for a read-only one.
        spec["root"]["readonly"] = json!(false);
        let b = Bundle { dir, spec };
        b.save();
        b
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    pub fn save(&self) {
        std::fs::write(
            self.dir.path().join("config.json"),
            serde_json::to_vec_pretty(&self.spec).unwrap(),
        )
        .unwrap();
    }

    /// Set `args` and save.
    pub fn args(&mut self, args: &[&str]) -> &mut Self {
        self.spec["process"]["args"] = json!(args);
        self.save();
        self
    }

    pub fn sh(&mut self, script: &str) -> &mut Self {
        self.args(&["sh", "-c", script])
    }
}

/// A private runtime root (`--root`), removed at the end of the test.
pub struct Rt {
    pub root: tempfile::TempDir,
}

impl Default for Rt {
    fn default() -> Self {
        Self::new()
    }
}

impl Rt {
    pub fn new() -> Rt {
        Rt {
            root: tempfile::Builder::new()
                .prefix("moat-root-")
                .tempdir()
                .unwrap(),
        }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--root").arg(self.root.path());
        c.stdin(Stdio::null());
        c
    }

    pub fn out(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Run a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.out(args);
        assert!(
            o.status.success(),
            "moat-runtime {args:?} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `run` the bundle and return (exit code, stdout, stderr).
    pub fn run(&self, b: &Bundle, id: &str) -> (i32, String, String) {
        let o = self
            .cmd()
            .args(["run", "--bundle"])
            .arg(b.path())
            .arg(id)
            .output()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    /// `run` that must exit 0; returns stdout.
    pub fn run_ok(&self, b: &Bundle, id: &str) -> String {
        let (code, out, err) = self.run(b, id);
        assert_eq!(
            code, 0,
            "run {id}: exit {code}\nstdout: {out}\nstderr: {err}"
        );
        out
    }

    /// `create` with the container's stdio on files (a pipe would stay open in the container's
    /// init, so waiting for its end would wait for the container).
    pub fn create(&self, b: &Bundle, id: &str) {
        let o = self.create_out(b, id, &[]);
        assert!(
            o.status.success(),
            "create {id}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// `create` with extra flags; returns the output (stderr read from a file).
    pub fn create_out(&self, b: &Bundle, id: &str, flags: &[&str]) -> Output {
        let err = tempfile::NamedTempFile::new().unwrap();
        let mut o = self
            .cmd()
            .arg("create")
            .args(flags)
            .arg("--bundle")
            .arg(b.path())
            .arg(id)
            .stdout(Stdio::null())
            .stderr(err.reopen().unwrap())
            .output()
            .unwrap();
        o.stderr = std::fs::read(err.path()).unwrap();
        o
    }

    pub fn state(&self, id: &str) -> Value {
        serde_json::from_str(&self.ok(&["state", id])).unwrap()
    }

    pub fn status(&self, id: &str) -> String {
        self.state(id)["status"].as_str().unwrap().to_owned()
    }

    /// Wait until the container reports `status` (up to 10 s).
    pub fn wait_status(&self, id: &str, status: &str) {
        for _ in 0..1000 {
            let o = self.out(&["state", id]);
            if o.status.success() {
                let v: Value = serde_json::from_slice(&o.stdout).unwrap();
                if v["status"] == status {
                    return;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("container {id} never reached status {status}");
    }
}

impl Drop for Rt {
    /// A failed test must not leak containers: force-delete whatever is left in this root.
    fn drop(&mut self) {
        if let Ok(rd) = std::fs::read_dir(self.root.path()) {
            for e in rd.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                let _ = self
                    .cmd()
                    .args(["delete", "--force", &id])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// Directories of a container's cgroup with the default cgroupsPath (`/moat/<id>`).
pub fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        out.push(PathBuf::from(format!("/sys/fs/cgroup/moat/{id}")));
    } else {
        for e in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            out.push(e.path().join("moat").join(id));
        }
    }
    out
}

/// Assert that nothing of container `id` remains: state dir, cgroup, mounts of the bundle, processes.
pub fn assert_clean(rt: &Rt, id: &str, bundle: Option<&Path>) {
    let dir = rt.root.path().join(id);
    assert!(!dir.exists(), "state dir {} left behind", dir.display());
    for d in cgroup_dirs(id) {
        assert!(!d.exists(), "cgroup {} left behind", d.display());
    }
    if let Some(b) = bundle {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let b = b.to_string_lossy();
        assert!(
            !mounts.contains(&*b),
            "a mount of bundle {b} is left on the host:\n{mounts}"
        );
    }
}

/// Accept one connection on `listener` and receive one descriptor (SCM_RIGHTS) with its payload,
/// as a console socket or a seccomp listener does.
pub fn accept_fd(listener: &std::os::unix::net::UnixListener) -> (Vec<u8>, std::os::fd::OwnedFd) {
    let (conn, _) = listener.accept().unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let (n, mut fds) = moat_sys::fd::recv_fds(std::os::fd::AsFd::as_fd(&conn), &mut buf).unwrap();
    buf.truncate(n);
    (buf, fds.pop().expect("no descriptor received"))
}

/// runc 1.1, the reference runtime, in a private root (containers left are force-deleted on drop);
/// None, with a printed reason, where runc is not installed.
pub struct Runc {
    pub bin: PathBuf,
    pub root: tempfile::TempDir,
}

impl Runc {
    pub fn new() -> Option<Runc> {
        let Some(bin) = support::which("runc") else {
            eprintln!("runc is not installed: the runc reference check is skipped");
            return None;
        };
        Some(Runc {
            bin,
            root: tempfile::Builder::new()
                .prefix("runc-root-")
                .tempdir()
                .unwrap(),
        })
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--root").arg(self.root.path());
        c.stdin(Stdio::null());
        c
    }

    /// `runc run [flags] --bundle B ID`: (exit code, stdout, stderr).
    pub fn run(&self, b: &Bundle, id: &str, flags: &[&str]) -> (i32, String, String) {
        let o = self
            .cmd()
            .arg("run")
            .args(flags)
            .arg("--bundle")
            .arg(b.path())
            .arg(id)
            .output()
            .unwrap();
        let _ = self.cmd().args(["delete", "--force", id]).output();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }
}

impl Drop for Runc {
    fn drop(&mut self) {
        if let Ok(rd) = std::fs::read_dir(self.root.path()) {
            for e in rd.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                let _ = self.cmd().args(["delete", "--force", &id]).output();
            }
        }
    }
}

/// `runc run` of the bundle in a private root; None when runc is not installed.
pub fn runc_run(b: &Bundle, id: &str) -> Option<(i32, String, String)> {
    Runc::new().map(|r| r.run(b, id, &[]))
}
