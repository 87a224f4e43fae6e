//! A real `docker-registry` (Debian's distribution/registry) on 127.0.0.1 with storage in a
//! temporary directory, killed on drop; and `skopeo copy` to push OCI layouts into it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Registry {
    child: Child,
    pub port: u16,
    pub storage: PathBuf,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Start a registry, or `None` when `docker-registry` is not installed.
    pub fn start() -> Option<Registry> {
        Self::start_with(None)
    }

    /// Start a registry that requires HTTP basic auth as `user`/`password` (htpasswd, bcrypt).
    pub fn start_with_auth(user: &str, password: &str) -> Option<Registry> {
        Self::start_with(Some((user, password)))
    }

    fn start_with(auth: Option<(&str, &str)>) -> Option<Registry> {
        if Command::new("docker-registry")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!(
                "skipped: docker-registry is not installed (apt-get install docker-registry)"
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let storage = dir.path().join("data");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        );
        let mut config = config;
        if let Some((user, password)) = auth {
            let hash = Command::new("python3")
                .args(["-W", "ignore", "-c", "import crypt,sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH)))", password])
                .output()
                .unwrap();
            let hash = String::from_utf8(hash.stdout).unwrap();
            assert!(
                hash.starts_with("$2"),
                "no bcrypt from python3's crypt: {hash}"
            );
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{user}:{}", hash.trim())).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: moat-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let r = Registry {
            child,
            port,
            storage,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if r.get("/v2/")
                .is_some_and(|s| s.starts_with("HTTP/1.1 200") || s.starts_with("HTTP/1.1 401"))
            {
                return Some(r);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("registry on port {port} did not come up");
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn get(&self, path: &str) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    }

    /// Push the OCI layout `dir` (tag `tag`) as `name:tag` with skopeo.
    pub fn push(&self, dir: &Path, tag: &str, name: &str) {
        push_with(
            dir,
            tag,
            &format!("docker://{}/{name}:{tag}", self.addr()),
            &[],
        );
    }

    /// Where the registry keeps the blob `digest` (`sha256:...`).
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = &digest[7..];
        self.storage.join(format!(
            "docker/registry/v2/blobs/sha256/{}/{hex}/data",
            &hex[..2]
        ))
    }
}

/// `skopeo copy oci:DIR:TAG DEST`.
pub fn push_with(dir: &Path, tag: &str, dest: &str, extra: &[&str]) {
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .args(extra)
        .arg(format!("oci:{}:{tag}", dir.display()))
        .arg(dest)
        .output()
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "skopeo copy to {dest}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
