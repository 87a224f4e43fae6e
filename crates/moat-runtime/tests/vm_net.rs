//! The network of VM containers (Kata's model): a bundle whose spec names a network namespace
//! runs in a VM that joins it (a tap per interface, tc mirred redirects both ways, QEMU inside,
//! the guest given the interface's MAC, addresses, routes and MTU); `delete` leaves no tap and no
//! tc qdisc, also after QEMU was killed with SIGKILL. Only addresses of a namespace and veth pair
//! made by the test are used (10.231.N.0/24, on this machine only).

mod common;
use common::*;
#[path = "support/vm_agent.rs"]
mod vm_agent;
use vm_agent::agent;

use std::io::{Read, Write};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn vm_cmd(rt: &Rt, args: &[&str]) -> Output {
    // stdout/stderr on files: a detached QEMU would otherwise hold our pipes open.
    let out = tempfile::NamedTempFile::new().unwrap();
    let err = tempfile::NamedTempFile::new().unwrap();
    let st = rt
        .cmd()
        .env("MOAT_AGENT_BIN", agent())
        .args(args)
        .stdout(out.reopen().unwrap())
        .stderr(err.reopen().unwrap())
        .status()
        .unwrap();
    Output {
        status: st,
        stdout: std::fs::read(out.path()).unwrap(),
        stderr: std::fs::read(err.path()).unwrap(),
    }
}

fn vm_ok(rt: &Rt, args: &[&str]) -> String {
    let o = vm_cmd(rt, args);
    assert!(
        o.status.success(),
        "moat-runtime {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn sh(cmd: &str) -> String {
    let o = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        o.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A network namespace `/run/netns/<name>` with `eth0` (10.231.N.2/24 and fd00:231:N::2/64, MTU
/// 1400, default route via .1, and a route to 10.232.N.0/24 via .1) whose veth peer (10.231.N.1,
/// fd00:231:N::1) is in the host; both removed on drop.
struct TestNet {
    name: String,
    host_if: String,
    n: u32,
}

impl TestNet {
    fn new() -> TestNet {
        // One per test of this process: tests run in parallel.
        static K: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let k = K.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let pid = std::process::id() % 100_000;
        let t = TestNet {
            name: format!("moatvmnet{pid}-{k}"),
            host_if: format!("mvn{pid}-{k}"),
            n: 100 + (pid + 37 * k) % 100,
        };
        sh(&format!(
            "ip netns add {ns} && ip link add {h} type veth peer name eth0 netns {ns} && \
             ip addr add 10.231.{n}.1/24 dev {h} && ip link set {h} up && \
             ip -n {ns} addr add 10.231.{n}.2/24 dev eth0 && \
             ip -n {ns} link set eth0 mtu 1400 up && \
             ip -n {ns} route add default via 10.231.{n}.1 && \
             ip -n {ns} route add 10.232.{n}.0/24 via 10.231.{n}.1 && \
             ip addr add fd00:231:{n}::1/64 dev {h} nodad && \
             ip -n {ns} addr add fd00:231:{n}::2/64 dev eth0 nodad",
            ns = t.name,
            h = t.host_if,
            n = t.n
        ));
        t
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    fn guest_ip(&self) -> String {
        format!("10.231.{}.2", self.n)
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// GET / from `ip:port`, retrying until `limit` (the guest boots meanwhile).
fn http_get(ip: &str, port: u16, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let r = (|| -> std::io::Result<String> {
            let addr = format!("{ip}:{port}").parse().unwrap();
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            Ok(body)
        })();
        match r {
            Ok(b) if !b.is_empty() => return b,
            _ if Instant::now() > deadline => panic!("no answer from {ip}:{port}: {r:?}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[test]
fn vm_joins_the_network_namespace_of_its_spec() {
    let net = TestNet::new();
    let rt = Rt::new();
    let mut b = Bundle::new(&["sh"]);
    b.spec["annotations"] = serde_json::json!({"io.moat.isolation": "vm"});
    for ns in b.spec["linux"]["namespaces"].as_array_mut().unwrap() {
        if ns["type"] == "network" {
            ns["path"] = serde_json::json!(net.path());
        }
    }
    b.sh("mkdir -p /tmp/www && echo hello-from-the-guest > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www");
    let id = id("vmnet");
    let t = Instant::now();
    vm_ok(
        &rt,
        &["create", "--bundle", b.path().to_str().unwrap(), &id],
    );
    eprintln!("create with a network device: {:?}", t.elapsed());
    // The tap and both redirects exist while the VM runs.
    let links = sh(&format!("ip -n {} link show", net.name));
    assert!(links.contains("tap0_moat"), "{links}");
    let filters = sh(&format!("tc -n {} filter show dev eth0 ingress", net.name));
    assert!(
        filters.contains("Redirect to device tap0_moat"),
        "{filters}"
    );
    vm_ok(&rt, &["start", &id]);
    let t = Instant::now();
    let body = http_get(&net.guest_ip(), 8080, Duration::from_secs(20));
    eprintln!("first answer after start: {:?}", t.elapsed());
    assert!(body.contains("hello-from-the-guest"), "{body}");
    let t = Instant::now();
    let n = 20;
    for _ in 0..n {
        http_get(&net.guest_ip(), 8080, Duration::from_secs(5));
    }
    eprintln!(
        "request latency (connect, GET, close): {:?}",
        t.elapsed() / n
    );
    // What the container sees in the guest: the veth's MAC, address, MTU and routes.
    let mac = sh(&format!(
        "ip netns exec {} cat /sys/class/net/eth0/address",
        net.name
    ));
    let seen = vm_ok(
        &rt,
        &[
            "exec",
            &id,
            "sh",
            "-c",
            "ip addr show eth0; ip route; cat /sys/class/net/eth0/mtu",
        ],
    );
    eprintln!("in the guest:\n{seen}");
    assert!(
        seen.contains(&format!("inet {}/24", net.guest_ip())),
        "{seen}"
    );
    assert!(seen.contains(mac.trim()), "{mac} in {seen}");
    assert!(seen.contains("mtu 1400"), "{seen}");
    assert!(
        seen.contains(&format!("default via 10.231.{}.1 dev eth0", net.n)),
        "{seen}"
    );
    assert!(
        seen.contains(&format!("10.232.{0}.0/24 via 10.231.{0}.1 dev eth0", net.n)),
        "{seen}"
    );
    assert!(
        seen.contains(&format!("inet6 fd00:231:{}::2/64 scope global", net.n)),
        "{seen}"
    );
    let body = http_get(
        &format!("[fd00:231:{}::2]", net.n),
        8080,
        Duration::from_secs(10),
    );
    assert!(body.contains("hello-from-the-guest"), "over IPv6: {body}");
    // Only the namespace's interface (and lo): nothing of the host.
    let links = vm_ok(&rt, &["exec", &id, "ls", "/sys/class/net"]);
    let mut names: Vec<&str> = links.split_whitespace().collect();
    names.sort();
    assert_eq!(names, ["eth0", "lo"], "{links}");
    // QEMU killed with SIGKILL: delete still removes the tap and the redirects.
    let pid = rt.state(&id)["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    rt.wait_status(&id, "stopped");
    vm_ok(&rt, &["delete", &id]);
    let links = sh(&format!("ip -n {} link show", net.name));
    assert!(!links.contains("_moat"), "{links}");
    let qdiscs = sh(&format!("tc -n {} qdisc show", net.name));
    assert!(!qdiscs.contains("ingress"), "{qdiscs}");
    let filters = sh(&format!("tc -n {} filter show dev eth0 ingress", net.name));
    assert!(filters.trim().is_empty(), "{filters}");
    assert_clean(&rt, &id, Some(b.path()));
}

#[test]
fn vm_without_a_network_namespace_is_refused() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.spec["annotations"] = serde_json::json!({"io.moat.isolation": "vm"});
    b.spec["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .retain(|n| n["type"] != "network");
    b.save();
    let id = id("vmhostnet");
    let o = vm_cmd(
        &rt,
        &["create", "--bundle", b.path().to_str().unwrap(), &id],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("cannot share the host's network stack"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error:"), "{err}");
    assert_clean(&rt, &id, Some(b.path()));
}

/// The host half alone (no VM): `attach` joins the namespace's eth0 to a tap both ways and reads
/// what the guest must get; `detach` removes the tap and the qdiscs; a second `attach` of a
/// namespace already in use is refused and leaves the first one's tap alone.
#[test]
fn attach_and_detach_a_network_namespace() {
    require_root();
    let net = TestNet::new();
    let path = std::path::PathBuf::from(net.path());
    let t = Instant::now();
    let a = moat_vm::net::attach(&path).unwrap();
    eprintln!("attach: {:?}", t.elapsed());
    assert_eq!(a.links.len(), 1, "{a:?}");
    assert_eq!(a.links[0].interface, "eth0");
    assert_eq!(a.interfaces[0].mtu, 1400);
    assert_eq!(a.interfaces[0].addresses[0].address, net.guest_ip());
    assert_eq!(a.routes.len(), 2, "{:?}", a.routes);
    for (from, to) in [("eth0", "tap0_moat"), ("tap0_moat", "eth0")] {
        let f = sh(&format!(
            "tc -n {} filter show dev {from} ingress",
            net.name
        ));
        assert!(f.contains(&format!("Redirect to device {to}")), "{f}");
    }
    let again = moat_vm::net::attach(&path).unwrap_err().to_string();
    assert!(
        again.contains("another VM uses this network namespace"),
        "{again}"
    );
    let t = Instant::now();
    moat_vm::net::detach(&path, &a.links).unwrap();
    eprintln!("detach: {:?}", t.elapsed());
    let links = sh(&format!("ip -n {} link show", net.name));
    assert!(!links.contains("_moat"), "{links}");
    let qdiscs = sh(&format!("tc -n {} qdisc show", net.name));
    assert!(!qdiscs.contains("ingress"), "{qdiscs}");
    // Detaching again (or from a namespace that is gone) is fine.
    moat_vm::net::detach(&path, &a.links).unwrap();
}
