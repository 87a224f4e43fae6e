//! What the `moat` CLI tests share: a private store per test ([`Moat`], whose drop removes every
//! container left in it), a busybox root filesystem, a wait loop, and the guest agent for VM runs.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub mod rootless;
#[path = "../../../moat-runtime/tests/support/vm_agent.rs"]
pub mod vm_agent;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

pub struct Moat {
    root: tempfile::TempDir,
}

impl Moat {
    pub fn new() -> Option<Moat> {
        if !is_root() {
            eprintln!("skipped: needs root");
            return None;
        }
        Some(Moat {
            root: tempfile::tempdir().unwrap(),
        })
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    pub fn cmd(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_moat"));
        c.arg("--root")
            .arg(self.root())
            .args(args)
            .stdin(std::process::Stdio::null());
        c
    }

    /// `cmd` for a command that boots a VM: with the static guest agent (built on first use).
    pub fn vm_cmd(&self, args: &[&str]) -> Output {
        self.command(args)
            .env("MOAT_AGENT_BIN", vm_agent::agent())
            .output()
            .unwrap()
    }

    /// `cmd` for a VM command with no set-up beyond the README's build: no MOAT_AGENT_BIN, the
    /// (dynamically linked) moat-agent that cargo builds beside moat is found there.
    pub fn vm_cmd_as_built(&self, args: &[&str]) -> Output {
        let beside = Path::new(env!("CARGO_BIN_EXE_moat")).with_file_name("moat-agent");
        if !beside.exists() {
            // `cargo test --workspace` builds it; `cargo test -p moat-cli` alone does not.
            let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args(["build", "-q", "-p", "moat-agent"])
                .status()
                .unwrap();
            assert!(st.success() && beside.exists(), "build moat-agent");
        }
        vm_agent::agent(); // the guest kernel in the cache (its first-use fetch is not timed here)
        self.command(args)
            .env_remove("MOAT_AGENT_BIN")
            .output()
            .unwrap()
    }

    /// Run and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        Self::require_ok(args, self.cmd(args))
    }

    /// `ok` for a command that boots a VM.
    pub fn vm_ok(&self, args: &[&str]) -> String {
        Self::require_ok(args, self.vm_cmd(args))
    }

    pub fn require_ok(args: &[&str], o: Output) -> String {
        assert!(
            o.status.success(),
            "moat {args:?}: {:?}\nstdout: {}\nstderr: {}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// No container dir, mount, runtime state or cgroup of `id` is left.
    pub fn assert_gone(&self, id: &str) {
        assert!(!self.root().join("containers").join(id).exists());
        assert!(!self.root().join("runtime").join(id).exists());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = self.root().display().to_string();
        assert!(
            !mounts.lines().any(|l| l.contains(&root)),
            "mounts left under the store"
        );
        for base in [
            "/sys/fs/cgroup/memory",
            "/sys/fs/cgroup/pids",
            "/sys/fs/cgroup",
        ] {
            assert!(
                !Path::new(base).join("moat").join(id).exists(),
                "cgroup left in {base}"
            );
        }
    }
}

impl Drop for Moat {
    fn drop(&mut self) {
        // Best effort: no container of this store outlives the test.
        let ids = self.cmd(&["ps", "-a", "-q"]);
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let _ = self.cmd(&["rm", "-f", id]);
        }
    }
}

pub fn busybox_rootfs() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let bin = d.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
    for c in ["sh", "echo", "cat", "id", "sleep", "touch", "true", "mkdir"] {
        std::os::unix::fs::symlink("busybox", bin.join(c)).unwrap();
    }
    d
}

pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A TCP port of 127.0.0.1 that was free a moment ago (to publish a container's port on).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET /index.html` from 127.0.0.1:`port`; the whole answer (status line, headers, body).
pub fn http_get(port: u16) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}
