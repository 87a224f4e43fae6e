//! End-to-end tests of the `moat` binary with real containers (as root): runs from a plain
//! directory and from imported and pulled images, detached containers with logs, stop and rm that
//! leave nothing behind, bind mounts, cgroup limits, names and id prefixes, and bridge networking
//! with a published port. Each test has its own store in a temporary directory.

mod images;
use images::{busybox_layout, import};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

mod harness;
use harness::*;

fn id_of(m: &Moat, name: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(&m.ok(&["inspect", name])).unwrap();
    v["Id"].as_str().unwrap().to_owned()
}

#[test]
fn run_rootfs_prints_and_propagates_exit_status() {
    let Some(m) = Moat::new() else { return };
    let r = busybox_rootfs();
    let rp = r.path().to_str().unwrap();
    assert_eq!(
        m.ok(&["run", "--rm", "--rootfs", rp, "echo", "hello"]),
        "hello\n"
    );
    let o = m.cmd(&["run", "--rm", "--rootfs", rp, "sh", "-c", "exit 7"]);
    assert_eq!(o.status.code(), Some(7));
    let o = m.cmd(&["run", "--rm", "--rootfs", rp, "no-such-command"]);
    assert_eq!(o.status.code(), Some(127));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("error: create container") && err.lines().count() == 1,
        "{err}"
    );
    assert_eq!(
        m.cmd(&["run", "--rm", "--memory", "1x", "--rootfs", rp, "true"])
            .status
            .code(),
        Some(125)
    );
    assert_eq!(m.ok(&["ps", "-a", "-q"]), "", "--rm left a container");
}

#[test]
fn privileged_gets_host_devices_and_every_capability_we_hold() {
    let Some(m) = Moat::new() else { return };
    let r = busybox_rootfs();
    let rp = r.path().to_str().unwrap();
    let out = m.ok(&[
        "run",
        "--rm",
        "--privileged",
        "--network",
        "none",
        "--rootfs",
        rp,
        "sh",
        "-c",
        "ls /dev | wc -l; grep CapEff /proc/self/status",
    ]);
    let n: usize = out.lines().next().unwrap().trim().parse().unwrap();
    let host = std::fs::read_dir("/dev").unwrap().count();
    assert!(
        n > 20 && n + 10 >= host.min(n + 10),
        "{n} entries in /dev (host {host}): {out}"
    );
    let ours = std::fs::read_to_string("/proc/self/status").unwrap();
    let bnd = ours
        .lines()
        .find(|l| l.starts_with("CapBnd"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned();
    assert!(
        out.contains(&format!("CapEff:\t{bnd}")),
        "{out} vs bounding {bnd}"
    );
}

#[test]
fn config_file_is_read_and_a_broken_one_is_refused() {
    let Some(m) = Moat::new() else { return };
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("moat.json");
    let run = |cfg: &Path| {
        Command::new(env!("CARGO_BIN_EXE_moat"))
            .env("MOAT_CONFIG", cfg)
            .arg("--root")
            .arg(m.root())
            .arg("images")
            .output()
            .unwrap()
    };
    std::fs::write(&cfg, r#"{"insecureRegistries": ["registry.test:5000"]}"#).unwrap();
    assert!(run(&cfg).status.success());
    std::fs::write(&cfg, "{ broken").unwrap();
    let o = run(&cfg);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("parse config"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn terminal_run_and_exec() {
    let Some(m) = Moat::new() else { return };
    let r = busybox_rootfs();
    let rp = r.path().to_str().unwrap();
    // The container's stdio is a pty; its output comes back through moat (CRLF from the pty).
    let out = m.ok(&[
        "run",
        "--rm",
        "-t",
        "--rootfs",
        rp,
        "sh",
        "-c",
        "tty; echo done",
    ]);
    assert!(
        out.contains("/dev/pts/0") && out.contains("done"),
        "{out:?}"
    );
    let o = m.cmd(&["run", "--rm", "-t", "--rootfs", rp, "sh", "-c", "exit 4"]);
    assert_eq!(o.status.code(), Some(4));
    let id = m
        .ok(&["run", "-d", "--rootfs", rp, "sleep", "1000"])
        .trim()
        .to_owned();
    let out = m.ok(&["exec", "-t", &id, "sh", "-c", "tty"]);
    assert!(out.contains("/dev/pts/"), "{out:?}");
    m.ok(&["rm", "-f", &id]);
    // -d -t (docker run -dt): the detached container gets a terminal whose output goes to the
    // log, and a shell on it stays alive (its terminal never reaches end-of-file).
    let id = m
        .ok(&[
            "run",
            "-d",
            "-t",
            "--rootfs",
            rp,
            "sh",
            "-c",
            "tty; echo dt-ready; exec sh",
        ])
        .trim()
        .to_owned();
    wait_for("the detached terminal's output in the log", || {
        let logs = m.ok(&["logs", &id]);
        logs.contains("/dev/pts/0") && logs.contains("dt-ready")
    });
    std::thread::sleep(Duration::from_millis(300));
    let ps = m.ok(&["ps"]);
    assert!(
        ps.contains(&id[..12]),
        "the shell on the terminal exited: {ps}"
    );
    m.ok(&["rm", "-f", &id]);
    assert_eq!(m.ok(&["ps", "-a", "-q"]), "", "a container was left");
}

#[test]
fn imported_image_runs_with_its_config() {
    let Some(m) = Moat::new() else { return };
    import(&m, "example.com/bb:v1");
    let images = m.ok(&["images"]);
    assert!(
        images.contains("example.com/bb") && images.contains("v1"),
        "{images}"
    );
    let out = m.ok(&[
        "run",
        "--rm",
        "--hostname",
        "box1",
        "example.com/bb:v1",
        "sh",
        "-c",
        "id; cat /etc/hostname; echo $HELLO",
    ]);
    assert_eq!(out, "uid=0(root) gid=0(root)\nbox1\nworld\n");
    assert_eq!(m.ok(&["run", "--rm", "example.com/bb:v1"]), "default\n");
    let out = m.ok(&[
        "run",
        "--rm",
        "-u",
        "nobody",
        "-w",
        "/tmp",
        "example.com/bb:v1",
        "sh",
        "-c",
        "id -u; pwd",
    ]);
    assert_eq!(out, "65534\n/tmp\n");
    let inspect: serde_json::Value =
        serde_json::from_str(&m.ok(&["image", "inspect", "example.com/bb:v1"])).unwrap();
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), 1);
    // Export and re-import under another name.
    let out = tempfile::tempdir().unwrap();
    let tarball = out.path().join("bb.tar");
    m.ok(&[
        "image",
        "export",
        "example.com/bb:v1",
        tarball.to_str().unwrap(),
    ]);
    m.ok(&[
        "image",
        "import",
        tarball.to_str().unwrap(),
        "--name",
        "example.com/copy:v2",
    ]);
    assert_eq!(
        m.ok(&["run", "--rm", "example.com/copy:v2", "echo", "copy"]),
        "copy\n"
    );
    m.ok(&["rmi", "example.com/copy:v2"]);
    m.ok(&["image", "gc"]);
    assert!(!m.ok(&["images"]).contains("copy"));
}

#[test]
fn detached_container_logs_ps_stop_rm_leave_nothing() {
    let Some(m) = Moat::new() else { return };
    import(&m, "example.com/bb:v1");
    let id = m
        .ok(&["run", "-d", "--name", "web", "example.com/bb:v1", "sh", "-c", "echo started; echo to-stderr >&2; trap 'echo bye; exit 3' TERM; while true; do sleep 0.1; done"])
        .trim()
        .to_owned();
    assert_eq!(id.len(), 64);
    wait_for("log output", || {
        m.ok(&["logs", "web"]).contains("to-stderr")
    });
    assert!(m.ok(&["logs", "web"]).contains("started"));
    let ps = m.ok(&["ps"]);
    assert!(
        ps.contains(&id[..12]) && ps.contains("web") && ps.contains("running"),
        "{ps}"
    );
    let inspect: serde_json::Value = serde_json::from_str(&m.ok(&["inspect", "web"])).unwrap();
    assert_eq!(inspect["State"]["Status"], "running");
    let pid = inspect["State"]["Pid"].as_i64().unwrap();
    assert!(pid > 0 && Path::new(&format!("/proc/{pid}")).exists());
    assert_eq!(
        m.ok(&["exec", "web", "cat", "/etc/hostname"]),
        format!("{}\n", &id[..12])
    );
    assert_eq!(
        m.cmd(&["exec", "web", "sh", "-c", "exit 5"]).status.code(),
        Some(5)
    );
    // A running container is not removed without -f.
    assert_eq!(m.cmd(&["rm", "web"]).status.code(), Some(125));
    m.ok(&["stop", "-t", "5", "web"]);
    assert!(m.ok(&["logs", "web"]).contains("bye"));
    assert!(!m.ok(&["ps"]).contains("web"));
    let all = m.ok(&["ps", "-a"]);
    assert!(all.contains("exited (3)"), "{all}");
    m.ok(&["rm", "web"]);
    m.assert_gone(&id);
    assert!(!m.root().join("names/web").exists());
}

#[test]
fn detached_rm_removes_itself_on_exit() {
    let Some(m) = Moat::new() else { return };
    import(&m, "example.com/bb:v1");
    let id = m
        .ok(&["run", "-d", "--rm", "example.com/bb:v1", "sleep", "0.2"])
        .trim()
        .to_owned();
    wait_for("auto-removal", || {
        !m.root().join("containers").join(&id).exists()
    });
    m.assert_gone(&id);
}

#[test]
fn read_only_volume_rejects_writes() {
    let Some(m) = Moat::new() else { return };
    let r = busybox_rootfs();
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("f"), "from host").unwrap();
    let ro = format!("{}:/data:ro", host.path().display());
    let rw = format!("{}:/data", host.path().display());
    let rp = r.path().to_str().unwrap();
    assert_eq!(
        m.ok(&["run", "--rm", "-v", &ro, "--rootfs", rp, "cat", "/data/f"]),
        "from host"
    );
    let o = m.cmd(&[
        "run",
        "--rm",
        "-v",
        &ro,
        "--rootfs",
        rp,
        "touch",
        "/data/new",
    ]);
    assert_ne!(o.status.code(), Some(0));
    assert!(!host.path().join("new").exists());
    m.ok(&[
        "run",
        "--rm",
        "-v",
        &rw,
        "--rootfs",
        rp,
        "touch",
        "/data/new",
    ]);
    assert!(host.path().join("new").exists());
    // --read-only root with a tmpfs for scratch space.
    let o = m.cmd(&[
        "run",
        "--rm",
        "--read-only",
        "--tmpfs",
        "/scratch",
        "--rootfs",
        rp,
        "sh",
        "-c",
        "touch /scratch/x && touch /bin/x",
    ]);
    assert_ne!(o.status.code(), Some(0));
    assert!(!r.path().join("bin/x").exists());
}

fn cgroup_file(id: &str, v1: &str, v2: &str) -> Option<String> {
    [
        PathBuf::from(format!("/sys/fs/cgroup/memory/moat/{id}/{v1}")),
        PathBuf::from(format!("/sys/fs/cgroup/moat/{id}/{v2}")),
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())
}

#[test]
fn memory_limit_is_enforced() {
    let Some(m) = Moat::new() else { return };
    let r = busybox_rootfs();
    let id = m
        .ok(&[
            "run",
            "-d",
            "--memory",
            "32m",
            "--pids-limit",
            "50",
            "--rootfs",
            r.path().to_str().unwrap(),
            "sleep",
            "30",
        ])
        .trim()
        .to_owned();
    let limit = cgroup_file(&id, "memory.limit_in_bytes", "memory.max")
        .expect("memory cgroup of the container");
    assert_eq!(limit.trim(), (32u64 << 20).to_string());
    m.ok(&["rm", "-f", &id[..16]]);
    m.assert_gone(&id);
}

#[test]
fn names_are_unique_and_ids_match_by_prefix() {
    let Some(m) = Moat::new() else { return };
    let r = busybox_rootfs();
    let rp = r.path().to_str().unwrap();
    m.ok(&["run", "--name", "one", "--rootfs", rp, "true"]);
    let o = m.cmd(&["run", "--name", "one", "--rootfs", rp, "true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already in use"));
    m.ok(&["run", "--rootfs", rp, "true"]); // a generated name
    let ids = m.ok(&["ps", "-a", "-q"]);
    assert_eq!(ids.lines().count(), 2, "{ids}");
    let one = id_of(&m, "one");
    assert_eq!(id_of(&m, &one[..6]), one);
    let other = ids
        .lines()
        .map(|i| id_of(&m, i))
        .find(|i| *i != one)
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&m.ok(&["inspect", &other])).unwrap();
    assert!(
        v["Name"].as_str().unwrap().contains('_'),
        "generated adjective_noun: {v}"
    );
    assert_eq!(m.cmd(&["inspect", "nope"]).status.code(), Some(125));
    for id in ids.lines() {
        m.ok(&["rm", id]);
    }
    m.assert_gone(&one);
}

#[test]
fn pull_from_local_registry_then_run() {
    let Some(m) = Moat::new() else { return };
    let Some(reg) = images::common::registry::Registry::start() else {
        return;
    };
    let layout = tempfile::tempdir().unwrap();
    busybox_layout(layout.path());
    reg.push(layout.path(), "v1", "moat/bb");
    let reference = format!("{}/moat/bb:v1", reg.addr());
    let out = m.cmd(&["pull", &reference]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("pulled"));
    assert_eq!(
        m.ok(&["run", "--rm", &reference, "echo", "pulled"]),
        "pulled\n"
    );
    m.ok(&["rmi", &reference]);
    // run pulls what is missing.
    let o = m.cmd(&["run", "--rm", &reference, "echo", "again"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "again\n");
    assert!(String::from_utf8_lossy(&o.stderr).contains("Unable to find image"));
}

#[test]
fn bridge_network_publishes_a_port() {
    let Some(m) = Moat::new() else { return };
    if !Path::new("/usr/lib/cni/bridge").exists() {
        eprintln!("skipped: containernetworking-plugins not installed");
        return;
    }
    import(&m, "example.com/bb:v1");
    let port = free_port();
    let web = tempfile::tempdir().unwrap();
    std::fs::write(web.path().join("index.html"), "hello from moat\n").unwrap();
    let vol = format!("{}:/www:ro", web.path().display());
    let publish = format!("127.0.0.1:{port}:80");
    let id = m
        .ok(&[
            "run",
            "-d",
            "--network",
            "bridge",
            "-p",
            &publish,
            "-v",
            &vol,
            "example.com/bb:v1",
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
        body.contains("hello from moat")
    });
    let inspect: serde_json::Value = serde_json::from_str(&m.ok(&["inspect", &id])).unwrap();
    // The address is in the bridge's subnet (10.213.87.0/24 on a new host; a moat0 made by an
    // older moat keeps its subnet).
    let bridge = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "moat0"])
        .output()
        .unwrap();
    let bridge = String::from_utf8_lossy(&bridge.stdout);
    let gw = bridge
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .expect("moat0 has an address");
    let net = &gw[..gw.rfind('.').unwrap() + 1];
    let ip = inspect["Network"]["IPAddress"].as_str().unwrap();
    assert!(ip.starts_with(net), "{ip} not in moat0's {gw}");
    m.ok(&["rm", "-f", &id]);
    m.assert_gone(&id);
    let nat = Command::new("iptables")
        .args(["-t", "nat", "-S"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&nat.stdout).contains(&id),
        "CNI rules of {id} left"
    );
}
