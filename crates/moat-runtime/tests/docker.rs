//! moat-runtime as a Docker runtime: a real dockerd (Debian's docker.io 20.10) started by the
//! test with moat-runtime registered as `--runtime moat`, driven through the `docker` CLI.
//!
//! One dockerd serves every case of this file (starting one costs about a second); the cases run
//! one after another inside a single test, each caught on its own so that one failure does not
//! hide the others, and the test fails listing the cases that failed. Where it is cheap a case
//! runs the same commands with `--runtime runc` and compares. Set `MOAT_DOCKER_CASES=a,b` to run
//! some cases only. Skipped (with the reason printed) only when docker.io cannot be installed.

mod common;
#[path = "support/dockerd.rs"]
mod dockerd;

use common::support::*;
use common::*;
use dockerd::{Dockerd, DOCKER_IMAGE as IMG};

use std::panic::AssertUnwindSafe;
use std::process::Command;
use std::time::{Duration, Instant};

const RUNTIMES: [&str; 2] = ["moat", "runc"];

/// One case of the suite, given the shared daemon.
type Case = fn(&Dockerd);

/// `run --rm --network none --runtime RT [flags] IMG sh -c script`: (exit code, stdout, stderr).
fn run_sh(dk: &Dockerd, rt: &str, flags: &[&str], script: &str) -> (i32, String, String) {
    let mut args = vec!["run", "--rm", "--network", "none", "--runtime", rt];
    args.extend_from_slice(flags);
    args.extend_from_slice(&[IMG, "sh", "-c", script]);
    let o = dk.out(&args);
    (
        o.status.code().unwrap_or(-1),
        text(&o.stdout),
        text(&o.stderr),
    )
}

/// The same run with moat and with runc must give the same exit code and output; returns it.
fn same_as_runc(dk: &Dockerd, flags: &[&str], script: &str) -> (i32, String, String) {
    let moat = run_sh(dk, "moat", flags, script);
    let runc = run_sh(dk, "runc", flags, script);
    assert_eq!(moat, runc, "moat vs runc for {flags:?} {script:?}");
    moat
}

/// Wait (up to 10 s) until `f` holds.
fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn inspect(dk: &Dockerd, id: &str, format: &str) -> String {
    dk.ok(&["inspect", "-f", format, id]).trim().to_owned()
}

fn run_rm(dk: &Dockerd) {
    let (code, out, err) = same_as_runc(dk, &[], "echo hello; echo oops >&2; exit 3");
    assert_eq!((code, out.as_str(), err.as_str()), (3, "hello\n", "oops\n"));
    // The cost of a `docker run --rm` (printed for the notes; not asserted).
    for rt in RUNTIMES {
        let t = Instant::now();
        for _ in 0..3 {
            assert_eq!(run_sh(dk, rt, &[], "true").0, 0);
        }
        eprintln!(
            "docker run --rm --runtime {rt}: {:.0} ms (mean of 3)",
            t.elapsed().as_secs_f64() * 1000.0 / 3.0
        );
    }
}

/// Limits given to `docker run` reach the cgroup as with runc, read from inside the container
/// (Docker mounts its cgroup at /sys/fs/cgroup).
fn run_limits(dk: &Dockerd) {
    let flags = [
        "--cpu-shares",
        "512",
        "--cpus",
        "1.5",
        "--memory",
        "64m",
        "--memory-reservation",
        "32m",
        "--pids-limit",
        "20",
        "--blkio-weight",
        "0",
        "--memory-swappiness",
        "-1",
    ];
    let script = if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "cd /sys/fs/cgroup && cat cpu.weight cpu.max memory.max memory.low pids.max"
    } else {
        "cd /sys/fs/cgroup && cat cpu/cpu.shares cpu/cpu.cfs_quota_us cpu/cpu.cfs_period_us \
         memory/memory.limit_in_bytes memory/memory.soft_limit_in_bytes pids/pids.max"
    };
    let (code, out, err) = same_as_runc(dk, &flags, script);
    assert_eq!(code, 0, "{err}");
    for want in ["150000", "67108864", "33554432", "20"] {
        assert!(out.contains(want), "{want} not in {out}");
    }
}

/// More `docker run` resource flags: each succeeds or fails (exit 125, a value the kernel or
/// runc refuses) exactly as with runc.
fn run_flags(dk: &Dockerd) {
    let sets: [&[&str]; 5] = [
        &["--kernel-memory", "50m"],
        &["--memory", "32m", "--memory-swappiness", "50"],
        &["--memory", "32m", "--oom-kill-disable"],
        &[
            "--cpuset-cpus",
            "0",
            "--cpu-period",
            "50000",
            "--cpu-quota",
            "25000",
        ],
        &["--cpu-shares", "1"],
    ];
    for flags in sets {
        let moat = run_sh(dk, "moat", flags, "echo ok");
        let runc = run_sh(dk, "runc", flags, "echo ok");
        assert_eq!(
            (moat.0, &moat.1),
            (runc.0, &runc.1),
            "{flags:?}: moat {} / runc {}",
            moat.2,
            runc.2
        );
    }
}

fn detach_logs(dk: &Dockerd) {
    let mut logs = Vec::new();
    for rt in RUNTIMES {
        let id = dk.run_d(&[
            "--network",
            "none",
            "--runtime",
            rt,
            IMG,
            "sh",
            "-c",
            "echo out; echo err >&2; exec sleep 60",
        ]);
        wait_for("logs", || dk.ok(&["logs", &id]).contains("out"));
        let o = dk.out(&["logs", &id]);
        logs.push((text(&o.stdout), text(&o.stderr)));
        dk.ok(&["rm", "-f", &id]);
    }
    assert_eq!(logs[0], ("out\n".to_owned(), "err\n".to_owned()));
    assert_eq!(logs[0], logs[1], "moat vs runc");
}

/// A shell command line running this daemon's docker client with `args`.
fn docker_sh(dk: &Dockerd, args: &str) -> String {
    format!("/usr/bin/docker -H unix://{} {args}", dk.sock().display())
}

/// `script -qec CMD /dev/null`: CMD gets a terminal (docker -t needs one); its stdout.
fn with_tty(cmd: &str) -> String {
    let o = run_deadline(
        Command::new("script").arg("-qec").arg(cmd).arg("/dev/null"),
        Duration::from_secs(30),
        "script",
    );
    text(&o.stdout).replace('\r', "")
}

/// What exec -i, exec -t, run -t, an exec's exit code and top give with runtime `rt`.
fn exec_with(dk: &Dockerd, rt: &str) -> Vec<String> {
    let id = dk.run_d(&["--network", "none", "--runtime", rt, IMG, "sleep", "60"]);
    let mut seen = Vec::new();
    // -i: stdin reaches the process (run_deadline's stdin is /dev/null: pipe through sh).
    let o = run_deadline(
        Command::new("sh").arg("-c").arg(format!(
            "echo hello | {}",
            docker_sh(dk, &format!("exec -i {id} sh -c 'read l; echo got $l'"))
        )),
        Duration::from_secs(30),
        "docker exec -i",
    );
    seen.push(text(&o.stdout));
    // -t: a terminal, through script(1) which gives docker one.
    let tty = "sh -c 'tty; stty size >/dev/null && echo ok'";
    seen.push(with_tty(&docker_sh(dk, &format!("exec -t {id} {tty}"))));
    seen.push(with_tty(&docker_sh(
        dk,
        &format!("run --rm -t --network none --runtime {rt} {IMG} {tty}"),
    )));
    // The exit code of the exec'd process.
    seen.push(format!(
        "{:?}",
        dk.out(&["exec", &id, "sh", "-c", "exit 7"]).status.code()
    ));
    // top lists the container's process (the CMD column; pids differ).
    let top = dk.ok(&["top", &id]);
    seen.push(
        top.lines()
            .skip(1)
            .map(|l| l.rsplit("  ").next().unwrap_or_default().trim().to_owned() + "\n")
            .collect(),
    );
    dk.ok(&["rm", "-f", &id]);
    seen
}

fn exec(dk: &Dockerd) {
    let moat = exec_with(dk, "moat");
    assert_eq!(moat[0], "got hello\n");
    assert!(
        moat[1].starts_with("/dev/pts/") && moat[1].ends_with("ok\n"),
        "exec -t: {:?}",
        moat[1]
    );
    assert!(
        moat[2].starts_with("/dev/pts/") && moat[2].ends_with("ok\n"),
        "run -t: {:?}",
        moat[2]
    );
    assert_eq!(moat[3], "Some(7)");
    assert_eq!(moat[4], "sleep 60\n");
    assert_eq!(moat, exec_with(dk, "runc"), "moat vs runc");
}

fn stop_restart(dk: &Dockerd) {
    let script = "trap 'echo bye; exit 0' TERM; echo start; while true; do sleep 0.1; done";
    let mut seen = Vec::new();
    for rt in RUNTIMES {
        let id = dk.run_d(&[
            "--network",
            "none",
            "--runtime",
            rt,
            IMG,
            "sh",
            "-c",
            script,
        ]);
        wait_for("start", || dk.ok(&["logs", &id]).contains("start"));
        let t = Instant::now();
        dk.ok(&["stop", "-t", "10", &id]);
        let stop_secs = t.elapsed().as_secs_f64();
        let after_stop = inspect(dk, &id, "{{.State.Status}} {{.State.ExitCode}}");
        dk.ok(&["restart", "-t", "10", &id]);
        let after_restart = inspect(dk, &id, "{{.State.Status}}");
        wait_for("second start", || {
            dk.ok(&["logs", &id]).matches("start").count() == 2
        });
        dk.ok(&["stop", "-t", "10", &id]);
        let logs = dk.ok(&["logs", &id]);
        dk.ok(&["rm", "-f", &id]);
        assert!(
            stop_secs < 5.0,
            "{rt}: stop took {stop_secs:.1}s (SIGTERM not delivered?)"
        );
        // A PID 1 without a SIGTERM handler ignores it: stop falls back to SIGKILL.
        let id2 = dk.run_d(&["--network", "none", "--runtime", rt, IMG, "sleep", "60"]);
        dk.ok(&["stop", "-t", "1", &id2]);
        let killed = inspect(dk, &id2, "{{.State.Status}} {{.State.ExitCode}}");
        dk.ok(&["rm", "-f", &id2]);
        seen.push((after_stop, after_restart, logs, killed));
    }
    assert_eq!(seen[0].0, "exited 0");
    assert_eq!(seen[0].1, "running");
    assert_eq!(seen[0].2, "start\nbye\nstart\nbye\n");
    assert_eq!(seen[0].3, "exited 137");
    assert_eq!(seen[0], seen[1], "moat vs runc");
}

fn pause_unpause(dk: &Dockerd) {
    let mut seen = Vec::new();
    for rt in RUNTIMES {
        let id = dk.run_d(&["--network", "none", "--runtime", rt, IMG, "sleep", "60"]);
        dk.ok(&["pause", &id]);
        let paused = inspect(dk, &id, "{{.State.Status}}");
        let frozen = if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            dk.cgroup_file(&id, ("", ""), "cgroup.events")
                .contains("frozen 1")
        } else {
            dk.cgroup_file(&id, ("freezer", "freezer.state"), "") == "FROZEN"
        };
        // Docker refuses exec into a paused container itself.
        let exec_paused = dk.out(&["exec", &id, "true"]).status.success();
        dk.ok(&["unpause", &id]);
        let resumed = inspect(dk, &id, "{{.State.Status}}");
        let exec_resumed = dk.out(&["exec", &id, "true"]).status.success();
        dk.ok(&["rm", "-f", &id]);
        seen.push((paused, frozen, exec_paused, resumed, exec_resumed));
    }
    assert_eq!(
        seen[0],
        ("paused".to_owned(), true, false, "running".to_owned(), true)
    );
    assert_eq!(seen[0], seen[1], "moat vs runc");
}

/// `docker update` of a running container with runtime `rt`: (container id, the limits read
/// back from its cgroup, what a fork past the new pids limit gave).
fn update_with(dk: &Dockerd, rt: &str) -> (String, Vec<String>) {
    let id = dk.run_d(&["--network", "none", "--runtime", rt, IMG, "sleep", "60"]);
    dk.ok(&[
        "update",
        "--memory",
        "64m",
        "--memory-swap",
        "64m",
        "--cpus",
        "0.5",
        "--pids-limit",
        "50",
        &id,
    ]);
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let mut seen = vec![
        dk.cgroup_file(&id, ("memory", "memory.limit_in_bytes"), "memory.max"),
        dk.cgroup_file(&id, ("pids", "pids.max"), "pids.max"),
    ];
    if v2 {
        seen.push(dk.cgroup_file(&id, ("", ""), "cpu.max"));
    } else {
        seen.push(format!(
            "{} {}",
            dk.cgroup_file(&id, ("cpu", "cpu.cfs_quota_us"), ""),
            dk.cgroup_file(&id, ("cpu", "cpu.cfs_period_us"), "")
        ));
    }
    // Inside, the limit is the one enforced: forking past 50 processes fails.
    let o = dk.out(&[
        "exec",
        &id,
        "sh",
        "-c",
        "for i in $(seq 1 60); do sleep 3 & done; echo forked",
    ]);
    let current: u32 = dk
        .cgroup_file(&id, ("pids", "pids.current"), "pids.current")
        .parse()
        .unwrap();
    seen.push(format!(
        "{} {}",
        current <= 50,
        text(&o.stdout).contains("forked")
    ));
    (id, seen)
}

fn update(dk: &Dockerd) {
    let (runc_id, runc) = update_with(dk, "runc");
    dk.ok(&["rm", "-f", &runc_id]);
    let (id, moat) = update_with(dk, "moat");
    assert_eq!(moat, ["67108864", "50", "50000 100000", "true false"]);
    assert_eq!(moat, runc, "moat vs runc");
    // All or nothing: a request moat refuses (here cpu.shares 1, below the kernel's 2) changes
    // nothing, not even the memory limit that comes first.
    let res = dk.path().join("update.json");
    std::fs::write(
        &res,
        r#"{"memory": {"limit": 33554432}, "cpu": {"shares": 1}}"#,
    )
    .unwrap();
    let o = run_deadline(
        Command::new(BIN)
            .arg("--root")
            .arg(dk.runtime_root())
            .args(["update", "-r"])
            .arg(&res)
            .arg(&id),
        Duration::from_secs(30),
        "moat-runtime update",
    );
    let err = text(&o.stderr);
    assert!(!o.status.success() && err.starts_with("error:"), "{err}");
    assert!(err.contains("cpu.shares"), "{err}");
    let mem = dk.cgroup_file(&id, ("memory", "memory.limit_in_bytes"), "memory.max");
    assert_eq!(mem, "67108864", "a refused update changed memory");
    dk.ok(&["rm", "-f", &id]);
}

fn stats(dk: &Dockerd) {
    let mut seen = Vec::new();
    for rt in RUNTIMES {
        let id = dk.run_d(&[
            "--network",
            "none",
            "--runtime",
            rt,
            "--memory",
            "64m",
            IMG,
            "sleep",
            "60",
        ]);
        let s = dk.ok(&[
            "stats",
            "--no-stream",
            "--format",
            "{{.MemUsage}}|{{.PIDs}}",
            &id,
        ]);
        dk.ok(&["rm", "-f", &id]);
        let (mem, pids) = s.trim().split_once('|').unwrap_or_default();
        let limit = mem.split(" / ").nth(1).unwrap_or_default().to_owned();
        let used = !mem.starts_with("0B");
        seen.push((limit, pids.to_owned(), used));
    }
    assert_eq!(seen[0], ("64MiB".to_owned(), "1".to_owned(), true));
    assert_eq!(seen[0], seen[1], "moat vs runc");
}

fn read_only_tmpfs(dk: &Dockerd) {
    let (code, out, _) = same_as_runc(dk, &["--read-only"], "touch /x 2>&1; echo rc=$?");
    assert_eq!(code, 0);
    assert!(
        out.contains("Read-only file system") && out.contains("rc=1"),
        "{out}"
    );
    let (_, out, _) = same_as_runc(
        dk,
        &["--read-only", "--tmpfs", "/run:size=1m"],
        "touch /run/x && echo written; grep ' /run ' /proc/mounts",
    );
    assert!(out.starts_with("written\ntmpfs /run tmpfs rw,"), "{out}");
    assert!(out.contains("size=1024k"), "{out}");
}

fn user_and_caps(dk: &Dockerd) {
    let (_, out, _) = same_as_runc(dk, &["--user", "65534:65534"], "id");
    assert_eq!(
        out,
        "uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)\n"
    );
    let (_, out, _) = same_as_runc(dk, &["--cap-drop", "ALL"], "grep Cap /proc/self/status");
    for l in out.lines() {
        assert!(l.ends_with("0000000000000000"), "{out}");
    }
    // Default capabilities match too.
    same_as_runc(dk, &[], "grep Cap /proc/self/status");
}

fn oom(dk: &Dockerd) {
    let mut seen = Vec::new();
    for rt in RUNTIMES {
        let name = id(&format!("moat-oom-{rt}"));
        let o = dk.out(&[
            "run",
            "--name",
            &name,
            "--network",
            "none",
            "--runtime",
            rt,
            "--memory",
            "16m",
            "--memory-swap",
            "16m",
            IMG,
            "sh",
            "-c",
            "x=a; while true; do x=$x$x; done",
        ]);
        let full = inspect(dk, &name, "{{.Id}}");
        dk.ids.borrow_mut().push(full);
        let state = inspect(dk, &name, "{{.State.OOMKilled}} {{.State.ExitCode}}");
        dk.ok(&["rm", &name]);
        seen.push((o.status.code(), state));
    }
    assert_eq!(seen[0], (Some(137), "true 137".to_owned()));
    assert_eq!(seen[0], seen[1], "moat vs runc");
}

/// A plain HTTP/1.0 GET of / on `addr`: the whole response.
fn http_get(addr: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// What a failed `publish` needs to be understood: the container's view of its network and
/// server, a direct connection to it past docker-proxy, and the host's side of the bridge.
fn publish_diagnostics(dk: &Dockerd, id: &str, bridge: &str) -> String {
    let run = |c: &mut Command| {
        let o = run_deadline(c, Duration::from_secs(20), "diagnostics");
        format!("{}{}", text(&o.stdout), text(&o.stderr))
    };
    let ip = inspect(
        dk,
        id,
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
    );
    let direct = http_get(&format!("{ip}:8080")).unwrap_or_else(|e| format!("error: {e}"));
    let inside = run(dk.cmd().args([
        "exec",
        id,
        "sh",
        "-c",
        "ip addr; ip route; netstat -ltn; ps; ls -l /tmp/r",
    ]));
    let logs = run(dk.cmd().args(["logs", id]));
    let host = run(Command::new("sh").arg("-c").arg(format!(
        "ip addr show {bridge}; ip route; ss -ltnp; iptables-save 2>&1 | head -60; \
         cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>&1; bridge link"
    )));
    format!(
        "container ip {ip}, direct answer {direct:?}\ninside:\n{inside}\nlogs:\n{logs}\nhost:\n{host}"
    )
}

fn publish(dk: &Dockerd) {
    // A bridge network of our own (not docker0); docker-proxy serves -p without iptables.
    let pid = std::process::id();
    let (net, bridge) = (
        format!("moat-net-{pid}"),
        format!("moatdk{}", pid % 100_000),
    );
    dk.networks.borrow_mut().push((net.clone(), bridge.clone()));
    // A subnet of 10.213.0.0/16 that no route of the host (another test's bridge) uses.
    let bridge_opt = format!("com.docker.network.bridge.name={bridge}");
    // Docker refuses only subnets of its own networks: skip the ones the host already routes
    // (moat's own bridge moat0 is 10.213.87.0/24; a second route to it sends the proxy's
    // connections nowhere).
    let routes = run_deadline(
        Command::new("ip").args(["-4", "-o", "route", "show"]),
        Duration::from_secs(10),
        "ip route",
    );
    let routes = text(&routes.stdout);
    let free = (0..250)
        .map(|i| (pid + i) % 250 + 1)
        .filter(|n| !routes.contains(&format!("10.213.{n}.")));
    let created = free.take(8).any(|n| {
        let subnet = format!("10.213.{n}.0/24");
        let o = dk.out(&[
            "network",
            "create",
            "-d",
            "bridge",
            "--subnet",
            &subnet,
            "-o",
            &bridge_opt,
            &net,
        ]);
        o.status.success()
    });
    assert!(
        created,
        "docker network create failed for 8 subnets of 10.213.0.0/16"
    );
    let server = "printf 'HTTP/1.0 200 OK\\r\\n\\r\\nhello from %s\\n' $(hostname) > /tmp/r; \
                  while true; do nc -l -p 8080 < /tmp/r; done";
    for rt in RUNTIMES {
        let id = dk.run_d(&[
            "--network",
            &net,
            "-p",
            "127.0.0.1::8080",
            "--runtime",
            rt,
            "--hostname",
            rt,
            IMG,
            "sh",
            "-c",
            server,
        ]);
        let port = dk.ok(&["port", &id, "8080"]);
        let port = port
            .lines()
            .next()
            .unwrap_or_default()
            .rsplit(':')
            .next()
            .unwrap_or_default();
        let addr = format!("127.0.0.1:{port}");
        let mut body = String::new();
        let start = Instant::now();
        while !body.contains("hello") {
            if start.elapsed() > Duration::from_secs(10) {
                panic!(
                    "timed out: {rt}: {addr} answers; last answer {body:?}\n{}",
                    publish_diagnostics(dk, &id, &bridge)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
            body = http_get(&addr).unwrap_or_else(|e| format!("error: {e}"));
        }
        let body = body.split("\r\n\r\n").nth(1).unwrap_or_default();
        assert_eq!(body, format!("hello from {rt}\n"));
        dk.ok(&["rm", "-f", &id]);
    }
    dk.ok(&["network", "rm", &net]);
    assert!(
        !std::path::Path::new("/sys/class/net")
            .join(&bridge)
            .exists(),
        "bridge {bridge} left"
    );
}

#[test]
fn docker_with_moat_runtime() {
    require_root();
    if let Err(why) = dockerd::ensure_docker() {
        eprintln!("SKIP: docker_with_moat_runtime: {why}");
        return;
    }
    let t0 = Instant::now();
    let dk = Dockerd::start(BIN);
    eprintln!("dockerd up in {:.1}s", t0.elapsed().as_secs_f64());
    let cases: [(&str, Case); 13] = [
        ("run_rm", run_rm),
        ("run_limits", run_limits),
        ("run_flags", run_flags),
        ("detach_logs", detach_logs),
        ("exec_top", exec),
        ("stop_restart", stop_restart),
        ("pause_unpause", pause_unpause),
        ("update", update),
        ("stats", stats),
        ("read_only_tmpfs", read_only_tmpfs),
        ("user_and_caps", user_and_caps),
        ("oom", oom),
        ("publish", publish),
    ];
    let only = std::env::var("MOAT_DOCKER_CASES").ok();
    let mut failed = Vec::new();
    for (name, f) in cases {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|c| c == name))
        {
            continue;
        }
        let t = Instant::now();
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| f(&dk)));
        let secs = t.elapsed().as_secs_f64();
        match r {
            Ok(()) => eprintln!("case {name}: ok ({secs:.1}s)"),
            Err(_) => {
                eprintln!(
                    "case {name}: FAILED ({secs:.1}s)\ndockerd log:\n{}",
                    dk.log()
                );
                failed.push(name);
            }
        }
    }
    if failed.is_empty() {
        dk.assert_clean();
    }
    drop(dk);
    eprintln!("total {:.1}s", t0.elapsed().as_secs_f64());
    assert!(failed.is_empty(), "failed cases: {failed:?}");
}
