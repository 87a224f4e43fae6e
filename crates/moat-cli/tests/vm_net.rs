//! `moat run --isolation vm --network bridge -p 127.0.0.1:PORT:80`: a busybox httpd in a VM
//! container answers from the host through the published port (CNI bridge and portmap on the
//! host, a tap joined to the namespace's eth0 by tc redirects, the guest's eth0 with the CNI
//! address); `moat rm -f` leaves no namespace, tap, iptables rule or process behind. Traffic stays
//! on this machine (loopback and the moat0 bridge).

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

#[path = "../../moat-runtime/tests/support/vm_agent.rs"]
mod vm_agent;

fn moat(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moat"))
        .arg("--root")
        .arg(root)
        .args(args)
        .env("MOAT_AGENT_BIN", vm_agent::agent())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

fn ok(root: &Path, args: &[&str]) -> String {
    let o = moat(root, args);
    assert!(
        o.status.success(),
        "moat {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `moat rm -f` of the container on drop (a failing test leaves no VM behind); dropped before
/// the store's temporary directory.
struct Remove<'a>(&'a Path, String);

impl Drop for Remove<'_> {
    fn drop(&mut self) {
        let _ = moat(self.0, &["rm", "-f", &self.1]);
    }
}

fn get(port: u16) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

#[test]
fn vm_container_answers_on_a_published_port() {
    if !nix::unistd::geteuid().is_root() || !Path::new("/usr/lib/cni/bridge").exists() {
        eprintln!("skipped: needs root and containernetworking-plugins");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let r = tempfile::tempdir().unwrap();
    let bin = r.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", bin.join("sh")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let publish = format!("127.0.0.1:{port}:80");
    let t = Instant::now();
    let id = ok(
        root.path(),
        &[
            "run",
            "-d",
            "--isolation",
            "vm",
            "--network",
            "bridge",
            "-p",
            &publish,
            "--rootfs",
            r.path().to_str().unwrap(),
            "sh",
            "-c",
            "busybox mkdir -p /tmp/www && echo hello-from-a-vm > /tmp/www/index.html && \
             exec busybox httpd -f -p 80 -h /tmp/www",
        ],
    )
    .trim()
    .to_owned();
    let _remove = Remove(root.path(), id.clone());
    eprintln!("run -d (VM with a network device): {:?}", t.elapsed());
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        match get(port) {
            Ok(b) if b.contains("hello-from-a-vm") => break b,
            r if Instant::now() > deadline => panic!("no answer on port {port}: {r:?}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    eprintln!("first answer: {:?} after run", t.elapsed());
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    let t = Instant::now();
    for _ in 0..20 {
        get(port).unwrap();
    }
    eprintln!("request latency through -p: {:?}", t.elapsed() / 20);
    let inspect: serde_json::Value =
        serde_json::from_str(&ok(root.path(), &["inspect", &id])).unwrap();
    let ip = inspect["Network"]["IPAddress"].as_str().unwrap().to_owned();
    assert!(ip.parse::<std::net::Ipv4Addr>().is_ok(), "{inspect}");
    // The guest has the CNI address on eth0 (the namespace's veth, seen through the tap).
    let seen = ok(
        root.path(),
        &["exec", &id, "busybox", "ip", "-4", "addr", "show", "eth0"],
    );
    assert!(seen.contains(&format!("inet {ip}/24")), "{seen}");
    // /etc/hosts and /etc/resolv.conf as for a namespaces container (moat's files, shared).
    let etc = ok(
        root.path(),
        &[
            "exec",
            &id,
            "busybox",
            "cat",
            "/etc/hosts",
            "/etc/resolv.conf",
        ],
    );
    assert!(
        etc.contains(&id[..12]) && etc.contains("nameserver"),
        "{etc}"
    );
    let netns = root.path().join("containers").join(&id).join("netns");
    assert!(netns.exists());
    ok(root.path(), &["rm", "-f", &id]);
    assert!(!netns.exists(), "the network namespace is still pinned");
    let links = Command::new("ip").args(["link"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains("_moat"),
        "a tap is left in the host"
    );
    let nat = Command::new("iptables")
        .args(["-t", "nat", "-S"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&nat.stdout).contains(&id),
        "CNI rules of {id} left"
    );
    assert!(
        !std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&id[..12]))
        }),
        "a process of the VM container is left"
    );
    assert!(get(port).is_err(), "the port still answers");
}
