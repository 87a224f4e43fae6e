//! `crictl` driving a pod of a handler end to end, as a node's operator would: `runp`, `inspectp`
//! (the pod's IP on the CNI network), `pull`, `create`, `start`, `logs`, `exec` (plain, `-i` with
//! stdin, `-it` under a pseudo-terminal made by `script`), `stats`, `stopp`, `rmp`.

use crate::env::*;
use crate::support::*;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(180);

fn crictl_ok(env: &CriEnv, args: &[&str]) -> String {
    let o = run_deadline(
        env.crictl().args(args),
        LIMIT,
        &format!("crictl {}", args[0]),
    );
    assert!(
        o.status.success(),
        "crictl {args:?} failed ({}):\nstdout: {}\nstderr: {}\n{}",
        o.status,
        text(&o.stdout),
        text(&o.stderr),
        env.cd.log()
    );
    text(&o.stdout)
}

/// `crictl exec -i` with `input` on its stdin.
fn exec_stdin(env: &CriEnv, cid: &str, input: &str) -> String {
    let mut child = env
        .crictl()
        .args(["exec", "-i", cid, "sh", "-c", "tr a-z A-Z"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < LIMIT, "crictl exec -i did not end");
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "crictl exec -i: {}", text(&o.stderr));
    text(&o.stdout)
}

/// Run a pod of `handler` with one busybox container through crictl and check what it shows.
pub fn drive_pod(env: &CriEnv, handler: &str) {
    let t0 = Instant::now();
    let dir = env.work.path().join(format!("crictl-{handler}"));
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let pod_json = dir.join("pod.json");
    std::fs::write(
        &pod_json,
        serde_json::json!({
            "metadata": {"name": format!("crictl-{handler}"), "namespace": "default",
                         "uid": format!("crictl-{handler}-{}", std::process::id())},
            "log_directory": logs,
            "linux": {},
        })
        .to_string(),
    )
    .unwrap();
    let ctr_json = dir.join("ctr.json");
    std::fs::write(
        &ctr_json,
        serde_json::json!({
            "metadata": {"name": "c1"},
            "image": {"image": BUSYBOX},
            // An httpd on the pod's loopback only, for `crictl port-forward`.
            "command": ["sh", "-c", "echo hello-from-crictl; mkdir -p /tmp/www; \
                         echo port-forward-ok > /tmp/www/index.html; \
                         busybox httpd -p 127.0.0.1:8080 -h /tmp/www; exec sleep 1000"],
            "log_path": "c1.log",
        })
        .to_string(),
    )
    .unwrap();

    let pod = crictl_ok(
        env,
        &["runp", "--runtime", handler, pod_json.to_str().unwrap()],
    )
    .trim()
    .to_owned();
    eprintln!(
        "crictl runp --runtime {handler}: {pod} in {:?}",
        t0.elapsed()
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&crictl_ok(env, &["inspectp", &pod])).unwrap();
    assert_eq!(inspect["status"]["state"], "SANDBOX_READY", "{inspect:#}");
    assert_eq!(inspect["info"]["runtimeHandler"], handler, "{inspect:#}");
    let ip = inspect["status"]["network"]["ip"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let prefix = env.net.subnet.trim_end_matches("0/24");
    assert!(
        ip.starts_with(prefix),
        "pod IP {ip:?} not in {}: {inspect:#}",
        env.net.subnet
    );
    eprintln!("pod IP {ip}");

    crictl_ok(env, &["pull", BUSYBOX]);
    let cid = crictl_ok(
        env,
        &[
            "create",
            &pod,
            ctr_json.to_str().unwrap(),
            pod_json.to_str().unwrap(),
        ],
    )
    .trim()
    .to_owned();
    crictl_ok(env, &["start", &cid]);
    let ps = crictl_ok(env, &["ps", "-q", "--pod", &pod, "--state", "Running"]);
    assert!(ps.contains(&cid), "{cid} not running: {ps}");

    // logs
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let l = crictl_ok(env, &["logs", &cid]);
        if l.contains("hello-from-crictl") {
            break;
        }
        assert!(Instant::now() < deadline, "crictl logs: {l:?}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // exec: plain; the container sees the pod's IP on its eth0.
    let out = crictl_ok(env, &["exec", &cid, "ip", "-4", "addr", "show", "eth0"]);
    assert!(
        out.contains(&format!("inet {ip}/")),
        "eth0 in the container: {out}"
    );
    let out = crictl_ok(
        env,
        &["exec", "--sync", &cid, "sh", "-c", "echo out; echo err >&2"],
    );
    assert!(out.contains("out"), "{out}");
    // exec -i: stdin reaches the process.
    let out = exec_stdin(env, &cid, "from stdin\n");
    assert_eq!(out, "FROM STDIN\n");
    // exec -it: a terminal (script(1) gives crictl a pseudo-terminal of its own).
    let cmd = format!(
        "{} exec -it {cid} sh -c 'tty; echo tty-ok; exit 3'",
        shell_quote_cmd(env.crictl())
    );
    let o = run_deadline(
        Command::new("script").args(["-qec", &cmd, "/dev/null"]),
        LIMIT,
        "crictl exec -it",
    );
    let out = text(&o.stdout);
    assert!(
        out.contains("/dev/pts/") && out.contains("tty-ok"),
        "crictl exec -it: {out:?} {}",
        text(&o.stderr)
    );
    // crictl reports the exit code (and exits 1 itself).
    assert!(
        out.contains("exit code 3"),
        "exit code through exec -it: {out:?}"
    );

    // port-forward: to a port of the pod's loopback (for a VM pod, the guest's).
    port_forward(env, &pod, 8080, "port-forward-ok");

    // stats
    let stats: serde_json::Value =
        serde_json::from_str(&crictl_ok(env, &["stats", "-o", "json", "--id", &cid])).unwrap();
    let s = &stats["stats"][0];
    let ws: u64 = s["memory"]["workingSetBytes"]["value"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .or_else(|| s["memory"]["workingSetBytes"]["value"].as_u64())
        .unwrap_or(0);
    assert!(ws > 0, "no memory working set: {stats:#}");
    assert!(
        !s["cpu"]["usageCoreNanoSeconds"].is_null(),
        "no cpu usage: {stats:#}"
    );
    eprintln!("crictl stats: working set {ws} bytes");

    // stopp, rmp
    crictl_ok(env, &["stopp", &pod]);
    let inspect: serde_json::Value =
        serde_json::from_str(&crictl_ok(env, &["inspectp", &pod])).unwrap();
    assert_eq!(
        inspect["status"]["state"], "SANDBOX_NOTREADY",
        "{inspect:#}"
    );
    crictl_ok(env, &["rmp", &pod]);
    let left = crictl_ok(env, &["pods", "-q"]);
    assert!(left.trim().is_empty(), "pods left: {left}");
    let left = crictl_ok(env, &["ps", "-a", "-q"]);
    assert!(left.trim().is_empty(), "containers left: {left}");
    eprintln!("crictl with handler {handler}: done in {:?}", t0.elapsed());
}

/// A command line for `script -c`: the program and its arguments, single-quoted.
fn shell_quote_cmd(c: Command) -> String {
    std::iter::once(c.get_program())
        .chain(c.get_args())
        .map(|a| format!("'{}'", a.to_string_lossy().replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `crictl port-forward POD LOCAL:port` and an HTTP GET through it answers `body`.
fn port_forward(env: &CriEnv, pod: &str, port: u16, body: &str) {
    use std::io::Read;
    let local = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let mut child = env
        .crictl()
        .args(["port-forward", pod, &format!("{local}:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let mut last;
    let got = loop {
        let r = std::net::TcpStream::connect(("127.0.0.1", local)).and_then(|mut c| {
            c.set_read_timeout(Some(Duration::from_secs(20)))?;
            c.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut s = String::new();
            c.read_to_string(&mut s)?;
            Ok(s)
        });
        match r {
            Ok(s) if s.contains(body) => break s,
            Ok(s) => last = s,
            Err(e) => last = e.to_string(),
        }
        if t.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("crictl port-forward {pod} {local}:{port}: no {body:?} in 30 s, last: {last:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = child.kill();
    let _ = child.wait();
    eprintln!(
        "crictl port-forward to port {port}: answered in {:?} ({} bytes)",
        t.elapsed(),
        got.len()
    );
}
