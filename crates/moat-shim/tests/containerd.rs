//! containerd-shim-moat-v2 under a real, private containerd: `ctr run --runtime io.containerd.moat.v2`
//! (stdout, exit code), exec, pause/resume, metrics, kill, and nothing left afterwards.

#[path = "../../moat-runtime/tests/support/mod.rs"]
mod support;
use support::*;

use std::path::Path;
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
