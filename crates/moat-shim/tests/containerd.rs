//! containerd-shim-moat-v2 under a real, private containerd: `ctr run --runtime io.containerd.moat.v2`
//! (stdout, exit code), exec, pause/resume, metrics, kill, and nothing left afterwards.

#[path = "../../moat-runtime/tests/support/mod.rs"]
mod support;
use support::*;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-moat-v2");
const RUNTIME: &[&str] = &["--runtime", "io.containerd.moat.v2"];

fn containerd(test: &str) -> Option<(Containerd, tempfile::TempDir)> {
    if !have_all(test, &["containerd", "ctr"]) {
        return None;
    }
    let cd = Containerd::start_with_path(&id("moat-shim"), Path::new(SHIM).parent());
    let work = tempfile::Builder::new()
        .prefix("moat-shim-image-")
        .tempdir()
        .unwrap();
    cd.import(&busybox_image(work.path()));
    Some((cd, work))
}

fn assert_shim_clean(cd: &Containerd, cid: &str) {
    let tasks = ok(
        cd.ctr().args(["task", "ls", "-q"]),
        Duration::from_secs(30),
        "ctr task ls",
    );
    assert!(tasks.trim().is_empty(), "tasks left: {tasks}");
    let state = Path::new("/run/moat-shim").join(&cd.ns).join(cid);
    assert!(!state.exists(), "moat state left at {}", state.display());
    assert_no_cgroup(&format!("{}/{cid}", cd.ns));
    // The shim exits once its last container is deleted.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !pids_with_cmdline(&format!("-id {cid}")).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "shim for {cid} still running:\n{}",
            cd.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ctr_run_through_the_moat_shim() {
    let Some((cd, _w)) = containerd("ctr_run_through_the_moat_shim") else {
        return;
    };
    let cid = id("shimrun");
    let o = cd.run_sh(
        RUNTIME,
        &cid,
        "echo from-moat-shim; echo to-stderr >&2; exit 3",
    );
    assert_eq!(
        o.status.code(),
        Some(3),
        "ctr run: stdout {} stderr {}\n{}",
        text(&o.stdout),
        text(&o.stderr),
        cd.log()
    );
    assert_eq!(text(&o.stdout), "from-moat-shim\n");
    assert!(text(&o.stderr).contains("to-stderr"), "{}", text(&o.stderr));
    assert_shim_clean(&cd, &cid);
}

#[test]
fn exec_pause_metrics_kill_through_the_moat_shim() {
    let Some((cd, _w)) = containerd("exec_pause_metrics_kill_through_the_moat_shim") else {
        return;
    };
    let cid = id("shimlife");
    cd.ids.borrow_mut().push(cid.clone());
    let o = run_deadline(
        cd.ctr()
            .args(["run", "-d"])
            .args(RUNTIME)
            .args([IMAGE, &cid, "sleep", "1000"]),
        Duration::from_secs(60),
        "ctr run -d",
    );
    assert!(
        o.status.success(),
        "ctr run -d: {}\n{}",
        text(&o.stderr),
        cd.log()
    );
    let o = run_deadline(
        cd.ctr().args([
            "task",
            "exec",
            "--exec-id",
            "e1",
            &cid,
            "sh",
            "-c",
            "echo exec-out; cat /proc/1/cmdline; exit 4",
        ]),
        Duration::from_secs(60),
        "ctr task exec",
    );
    assert_eq!(
        o.status.code(),
        Some(4),
        "exec: {} {}\n{}",
        text(&o.stdout),
        text(&o.stderr),
        cd.log()
    );
    assert!(
        text(&o.stdout).starts_with("exec-out\nsleep"),
        "{}",
        text(&o.stdout)
    );

    ok(
        cd.ctr().args(["task", "pause", &cid]),
        Duration::from_secs(30),
        "ctr task pause",
    );
    let ls = ok(
        cd.ctr().args(["task", "ls"]),
        Duration::from_secs(30),
        "ctr task ls",
    );
    assert!(ls.contains("PAUSED"), "{ls}");
    ok(
        cd.ctr().args(["task", "resume", &cid]),
        Duration::from_secs(30),
        "ctr task resume",
    );
    let ls = ok(
        cd.ctr().args(["task", "ls"]),
        Duration::from_secs(30),
        "ctr task ls",
    );
    assert!(ls.contains("RUNNING"), "{ls}");

    let m = ok(
        cd.ctr().args(["task", "metrics", &cid]),
        Duration::from_secs(30),
        "ctr task metrics",
    );
    assert!(
        m.contains("memory.usage_in_bytes") || m.contains("memory"),
        "{m}"
    );
    assert!(m.contains("pids.current"), "{m}");
    let ps = ok(
        cd.ctr().args(["task", "ps", &cid]),
        Duration::from_secs(30),
        "ctr task ps",
    );
    assert!(ps.lines().count() >= 2, "{ps}");

    ok(
        cd.ctr().args(["task", "kill", "-s", "SIGKILL", &cid]),
        Duration::from_secs(30),
        "ctr task kill",
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ls = ok(
            cd.ctr().args(["task", "ls"]),
            Duration::from_secs(30),
            "ctr task ls",
        );
        if ls.contains("STOPPED") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "task not stopped: {ls}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ok(
        cd.ctr().args(["task", "rm", &cid]),
        Duration::from_secs(30),
        "ctr task rm",
    );
    ok(
        cd.ctr().args(["container", "rm", &cid]),
        Duration::from_secs(30),
        "ctr container rm",
    );
    assert_shim_clean(&cd, &cid);
}

/// A process of a container killed by the OOM killer is published as `/tasks/oom`, before its
/// exit: from the exit's own check of the cgroup's counter (an exec, an init) or from the shim's
/// watcher (an eventfd on v1, inotify on v2) while the container runs (a child of an exec).
#[test]
fn an_oom_kill_is_published_as_a_task_oom_event() {
    let Some((cd, _w)) = containerd("an_oom_kill_is_published_as_a_task_oom_event") else {
        return;
    };
    let cid = id("shimoom");
    cd.ids.borrow_mut().push(cid.clone());
    let mut events = cd
        .ctr()
        .arg("events")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    let out = events.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    ok(
        cd.ctr()
            .args(["run", "-d", "--memory-limit", "33554432"])
            .args(RUNTIME)
            .args([IMAGE, &cid, "sleep", "1000"]),
        Duration::from_secs(60),
        "ctr run -d --memory-limit",
    );
    // The topics of the next `n` events of container `cid` among `want` (within 10 s), and the
    // other events seen meanwhile.
    let topics = |cid: &str, want: &[&'static str], n: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let (mut got, mut other) = (vec![], vec![]);
        while got.len() < n {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let Ok(l) = lines.recv_timeout(left) else {
                break;
            };
            match want.iter().find(|t| l.contains(cid) && l.contains(*t)) {
                Some(t) => got.push(*t),
                None => other.push(l),
            }
        }
        (got, other)
    };
    let hog = ["sh", "-c", "x=0123456789; while :; do x=$x$x; done"];
    let killed = |cmd: &mut Command, what: &str| {
        let o = run_deadline(cmd.args(hog), Duration::from_secs(60), what);
        assert_eq!(
            o.status.code(),
            Some(137),
            "{}\n{}",
            text(&o.stderr),
            cd.log()
        );
    };
    killed(
        cd.ctr().args(["task", "exec", "--exec-id", "hog", &cid]),
        "ctr task exec (a memory hog)",
    );
    let (got, seen) = topics(&cid, &["/tasks/oom", "/tasks/exit"], 2);
    assert_eq!(
        got,
        ["/tasks/oom", "/tasks/exit"],
        "{seen:#?}\n{}",
        cd.log()
    );
    // A process that is neither an init nor an exec (a child the OOM killer ends while its
    // parent lives on): the watcher publishes it while the exec still runs.
    let mut parent = cd
        .ctr()
        .args(["task", "exec", "--exec-id", "parent", &cid, "sh", "-c"])
        .arg("sh -c 'x=0123456789; while :; do x=$x$x; done'; sleep 5")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (got, seen) = topics(&cid, &["/tasks/oom"], 1);
    let running = parent.try_wait().unwrap().is_none();
    let st = parent.wait().unwrap();
    assert_eq!(got, ["/tasks/oom"], "{seen:#?}\n{}", cd.log());
    assert!(
        running,
        "the OOM kill was published only when its parent exited"
    );
    assert_eq!(st.code(), Some(0));
    let (got, seen) = topics(&cid, &["/tasks/exit"], 1);
    assert_eq!(got, ["/tasks/exit"], "{seen:#?}\n{}", cd.log());
    ok(
        cd.ctr().args(["task", "kill", "-s", "KILL", &cid]),
        Duration::from_secs(30),
        "ctr task kill",
    );

    // A container whose init is the hog: its OOM kill is published, and before its exit (what
    // Kubernetes' OOMKilled reason rests on).
    let cid2 = id("shimoominit");
    cd.ids.borrow_mut().push(cid2.clone());
    killed(
        cd.ctr()
            .args(["run", "--rm", "--memory-limit", "33554432"])
            .args(RUNTIME)
            .args([IMAGE, &cid2]),
        "ctr run (an init that is a memory hog)",
    );
    let (got, seen) = topics(&cid2, &["/tasks/oom", "/tasks/exit"], 2);
    let _ = events.kill();
    let _ = events.wait();
    assert_eq!(
        got,
        ["/tasks/oom", "/tasks/exit"],
        "{seen:#?}\n{}",
        cd.log()
    );
}
