//! The OCI lifecycle through the runc command line: create, state, start, kill, delete, run, list.

mod common;
use common::*;

#[test]
fn create_start_kill_delete() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["sleep", "1000"]);
    b.sh("echo started > /tmp/marker; exec sleep 1000");
    let id = id("life");
    rt.create(&b, &id);
    let st = rt.state(&id);
    assert_eq!(st["status"], "created");
    assert_eq!(st["id"], id.as_str());
    assert_eq!(st["bundle"], b.path().to_str().unwrap());
    assert_eq!(st["ociVersion"], "1.2.0");
    let pid = st["pid"].as_i64().unwrap();
    assert!(pid > 0);
    // The init waits: the user program has not run yet.
    assert!(!b.rootfs().join("tmp/marker").exists());
    for d in cgroup_dirs(&id) {
        assert!(d.exists(), "cgroup {} missing", d.display());
    }
    let procs = std::fs::read_to_string(cgroup_dirs(&id)[0].join("cgroup.procs")).unwrap();
    assert!(
        procs.lines().any(|l| l.trim() == pid.to_string()),
        "init {pid} not in its cgroup: {procs}"
    );

    rt.ok(&["start", &id]);
    assert_eq!(rt.status(&id), "running");
    for _ in 0..500 {
        if b.rootfs().join("tmp/marker").exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(
        b.rootfs().join("tmp/marker").exists(),
        "user process did not run after start"
    );
    // A second start is refused.
    assert!(!rt.out(&["start", &id]).status.success());
    // delete without --force refuses a running container.
    let o = rt.out(&["delete", &id]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).starts_with("error: "),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    rt.ok(&["kill", &id, "KILL"]);
    rt.wait_status(&id, "stopped");
    assert_eq!(rt.state(&id)["pid"], 0);
    rt.ok(&["delete", &id]);
    assert!(!rt.out(&["state", &id]).status.success());
    assert_clean(&rt, &id, Some(b.path()));
}

#[test]
fn run_returns_exit_status_and_output() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.sh("echo out; echo err >&2; exit 7");
    let id = id("run");
    let (code, out, err) = rt.run(&b, &id);
    assert_eq!(code, 7);
    assert_eq!(out, "out\n");
    assert_eq!(err, "err\n");
    assert_clean(&rt, &id, Some(b.path()));
}

#[test]
fn run_reports_death_by_signal_as_128_plus_n() {
    let rt = Rt::new();
    let b = Bundle::new(&["sleep", "1000"]);
    let id = id("sig");
    let child = rt
        .cmd()
        .args(["run", "--bundle"])
        .arg(b.path())
        .arg(&id)
        .spawn()
        .unwrap();
    rt.wait_status(&id, "running");
    rt.ok(&["kill", &id, "KILL"]);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(128 + 9));
    assert_clean(&rt, &id, Some(b.path()));
}

#[test]
fn stdin_is_passed_through() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["cat"]);
    b.args(&["cat"]);
    let id = id("stdin");
    let mut child = rt
        .cmd()
        .args(["run", "--bundle"])
        .arg(b.path())
        .arg(&id)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"through the container\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "through the container\n"
    );
}

#[test]
fn detached_run_then_kill_by_number_and_list() {
    let rt = Rt::new();
    let b = Bundle::new(&["sleep", "1000"]);
    let id = id("det");
    let o = rt
        .cmd()
        .args(["run", "--detach", "--bundle"])
        .arg(b.path())
        .arg(&id)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(o.success());
    assert_eq!(rt.status(&id), "running");
    let list = rt.ok(&["list", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert!(v
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["id"] == id.as_str() && c["status"] == "running"));
    assert_eq!(rt.ok(&["list", "-q"]).trim(), id);
    let table = rt.ok(&["list"]);
    assert!(table.starts_with("ID") && table.contains(&id));
    rt.ok(&["kill", &id, "9"]);
    rt.wait_status(&id, "stopped");
    rt.ok(&["delete", &id]);
    assert_clean(&rt, &id, Some(b.path()));
}

#[test]
fn kill_all_signals_every_process_and_delete_force_cleans() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.sh("sleep 1000 & sleep 1000 & exec sleep 1000");
    let id = id("killall");
    let o = rt
        .cmd()
        .args(["run", "-d", "--bundle"])
        .arg(b.path())
        .arg(&id)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(o.success());
    std::thread::sleep(std::time::Duration::from_millis(200));
    let procs = std::fs::read_to_string(cgroup_dirs(&id)[0].join("cgroup.procs")).unwrap();
    assert!(procs.lines().count() >= 3, "expected 3 processes: {procs}");
    rt.ok(&["kill", "--all", &id, "SIGKILL"]);
    rt.wait_status(&id, "stopped");
    rt.ok(&["delete", "--force", &id]);
    assert_clean(&rt, &id, Some(b.path()));
}

#[test]
fn delete_force_of_running_and_missing_containers() {
    let rt = Rt::new();
    let b = Bundle::new(&["sleep", "1000"]);
    let id = id("force");
    rt.create(&b, &id);
    rt.ok(&["start", &id]);
    rt.ok(&["delete", "--force", &id]);
    assert_clean(&rt, &id, Some(b.path()));
    // runc: delete --force of a missing container succeeds, plain delete fails.
    rt.ok(&["delete", "--force", "never-existed"]);
    let o = rt.out(&["delete", "never-existed"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not exist"));
}

#[test]
fn delete_after_the_process_died_on_its_own() {
    let rt = Rt::new();
    let b = Bundle::new(&["true"]);
    let id = id("died");
    rt.create(&b, &id);
    rt.ok(&["start", &id]);
    rt.wait_status(&id, "stopped");
    rt.ok(&["delete", &id]);
    assert_clean(&rt, &id, Some(b.path()));
}

#[test]
fn delete_of_created_container() {
    let rt = Rt::new();
    let b = Bundle::new(&["true"]);
    let id = id("delcreated");
    rt.create(&b, &id);
    let pid = rt.state(&id)["pid"].as_i64().unwrap();
    rt.ok(&["delete", &id]);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z"))
                .unwrap_or(true)
    );
    assert_clean(&rt, &id, Some(b.path()));
}

#[test]
fn pid_file_is_written() {
    let rt = Rt::new();
    let b = Bundle::new(&["true"]);
    let id = id("pidfile");
    let pf = b.path().join("init.pid");
    let o = rt.create_out(&b, &id, &["--pid-file", pf.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pid: i64 = std::fs::read_to_string(&pf)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(pid, rt.state(&id)["pid"].as_i64().unwrap());
    rt.ok(&["delete", "--force", &id]);
    assert_clean(&rt, &id, Some(b.path()));
}

#[test]
fn duplicate_id_is_refused() {
    let rt = Rt::new();
    let b = Bundle::new(&["true"]);
    let id = id("dup");
    rt.create(&b, &id);
    let o = rt.create_out(&b, &id, &[]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
    rt.ok(&["delete", "--force", &id]);
    assert_clean(&rt, &id, Some(b.path()));
}

#[test]
fn fifty_concurrent_containers() {
    let rt = std::sync::Arc::new(Rt::new());
    let b = std::sync::Arc::new(Bundle::new(&["true"]));
    let handles: Vec<_> = (0..50)
        .map(|i| {
            let rt = rt.clone();
            let b = b.clone();
            std::thread::spawn(move || {
                let id = format!("conc-{}-{i}", std::process::id());
                rt.create(&b, &id);
                rt.ok(&["delete", "--force", &id]);
                id
            })
        })
        .collect();
    for h in handles {
        let id = h.join().unwrap();
        assert_clean(&rt, &id, None);
    }
    assert_eq!(rt.ok(&["list", "-q"]).trim(), "");
}

#[test]
fn spec_features_version() {
    let rt = Rt::new();
    let v: serde_json::Value = serde_json::from_str(&rt.ok(&["features"])).unwrap();
    assert_eq!(v["ociVersionMin"], "1.0.0");
    assert!(v["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n == "time"));
    assert!(v["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n == "createContainer"));
    assert!(rt.ok(&["--version"]).contains("moat-runtime"));
    let d = tempfile::tempdir().unwrap();
    rt.ok(&["spec", "--bundle", d.path().to_str().unwrap()]);
    let o = rt.out(&["spec", "--bundle", d.path().to_str().unwrap()]);
    assert!(
        !o.status.success(),
        "spec must not overwrite an existing config.json"
    );
    let d2 = tempfile::tempdir().unwrap();
    rt.ok(&[
        "spec",
        "--rootless",
        "--bundle",
        d2.path().to_str().unwrap(),
    ]);
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d2.path().join("config.json")).unwrap()).unwrap();
    assert!(s["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["type"] == "user"));
}

#[test]
fn json_log_records_errors() {
    let rt = Rt::new();
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("log.json");
    let o = rt
        .cmd()
        .args(["--log"])
        .arg(&log)
        .args(["--log-format", "json", "start", "nope"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(line["level"], "error");
    assert!(line["msg"].as_str().unwrap().contains("nope"));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: start container nope"));
}
