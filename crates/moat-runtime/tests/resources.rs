//! Resource control, observed from inside and outside: memory (OOM kill + oom event), pids, cpu
//! quota, devices, pause/resume, update, ps and events.

mod common;
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

fn detach(rt: &Rt, b: &Bundle, id: &str) {
    let st = rt
        .cmd()
        .args(["run", "-d", "--bundle"])
        .arg(b.path())
        .arg(id)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "run -d {id}");
}

#[test]
fn memory_limit_oom_kills_and_events_report_it() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.spec["linux"]["resources"]["memory"] =
        json!({"limit": 32 * 1024 * 1024, "swap": 32 * 1024 * 1024});
    b.sh("sleep 1; x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived");
    let id = id("oom");
    detach(&rt, &b, &id);
    let events = rt
        .cmd()
        .args(["events", "--interval", "1s", &id])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    rt.wait_status(&id, "stopped");
    let out = events.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| serde_json::from_str::<serde_json::Value>(l)
                .map(|v| v["type"] == "oom")
                .unwrap_or(false)),
        "no oom event: {text}"
    );
    rt.ok(&["delete", &id]);
    assert_clean(&rt, &id, Some(b.path()));
}

#[test]
fn pids_limit_stops_a_fork_bomb() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.spec["linux"]["resources"]["pids"] = json!({"limit": 10});
    // The inner shell forks until it fails (and then exits); the outer one stays as pid 1.
    b.sh("sh -c 'while :; do sleep 100 & done' 2>/dev/null; sleep 100");
    let id = id("pids");
    detach(&rt, &b, &id);
    std::thread::sleep(Duration::from_millis(800));
    let pids: Vec<i64> = serde_json::from_str(&rt.ok(&["ps", "--format", "json", &id])).unwrap();
    assert!(
        pids.len() <= 10,
        "{} processes with a pids limit of 10",
        pids.len()
    );
    assert!(
        pids.len() >= 8,
        "the fork bomb did not run: {} processes",
        pids.len()
    );
    assert_eq!(rt.status(&id), "running");
    rt.ok(&["delete", "--force", &id]);
    assert_clean(&rt, &id, Some(b.path()));
}

#[test]
fn cpu_quota_caps_cpu_time() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.spec["linux"]["resources"]["cpu"] = json!({"quota": 20000, "period": 100000});
    b.sh("while :; do :; done");
    let id = id("cpu");
    detach(&rt, &b, &id);
    let usage = |rt: &Rt| -> u64 {
        let v: serde_json::Value =
            serde_json::from_str(&rt.ok(&["events", "--stats", &id])).unwrap();
        v["data"]["cpu"]["usage"]["total"].as_u64().unwrap()
    };
    let start = usage(&rt);
    let t = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    let used = usage(&rt) - start;
    let wall = t.elapsed().as_nanos() as u64;
    assert!(
        used < wall * 35 / 100,
        "used {used} ns of cpu in {wall} ns wall with a 20% quota"
    );
    assert!(
        used > wall * 5 / 100,
        "the busy loop did not run: {used} ns"
    );
    rt.ok(&["delete", "--force", &id]);
    assert_clean(&rt, &id, Some(b.path()));
}

#[test]
fn a_device_not_allowed_cannot_be_opened() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.spec["process"]["capabilities"]["bounding"]
        .as_array_mut()
        .unwrap()
        .push(json!("CAP_MKNOD"));
    b.spec["process"]["capabilities"]["effective"]
        .as_array_mut()
        .unwrap()
        .push(json!("CAP_MKNOD"));
    b.spec["process"]["capabilities"]["permitted"]
        .as_array_mut()
        .unwrap()
        .push(json!("CAP_MKNOD"));
    // /dev/mem (1:1) is not in the allow list; /dev/zero (1:5) is.
    b.sh("mknod /tmp/mem c 1 1 && mknod /tmp/zero c 1 5; head -c 1 /tmp/mem >/dev/null 2>&1 && echo mem-open || echo mem-denied; head -c 1 /tmp/zero | wc -c");
    let out = rt.run_ok(&b, &id("devices"));
    assert_eq!(out, "mem-denied\n1\n");
}

#[test]
fn pause_stops_progress_and_resume_restarts_it() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.sh("i=0; while :; do i=$((i+1)); echo $i > /tmp/c.tmp; mv /tmp/c.tmp /tmp/count; done");
    let id = id("pause");
    detach(&rt, &b, &id);
    // The writer truncates then writes: take the largest of a few reads.
    let count = || {
        (0..20)
            .filter_map(|_| {
                std::fs::read_to_string(b.rootfs().join("tmp/count"))
                    .ok()?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .max()
            .unwrap_or(0)
    };
    std::thread::sleep(Duration::from_millis(300));
    rt.ok(&["pause", &id]);
    assert_eq!(rt.status(&id), "paused");
    let a = count();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(count(), a, "the counter moved while paused");
    assert!(
        !rt.out(&["pause", &id]).status.success(),
        "pausing a paused container must fail"
    );
    rt.ok(&["resume", &id]);
    assert_eq!(rt.status(&id), "running");
    std::thread::sleep(Duration::from_millis(400));
    assert!(count() > a, "the counter did not move after resume");
    rt.ok(&["delete", "--force", &id]);
    assert_clean(&rt, &id, Some(b.path()));
}

#[test]
fn update_changes_live_limits_and_ps_lists_pids() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["sleep", "1000"]);
    b.spec["linux"]["resources"]["pids"] = json!({"limit": 100});
    b.save();
    let id = id("update");
    detach(&rt, &b, &id);
    let pids_max = || {
        let v1 = format!("/sys/fs/cgroup/pids/moat/{id}/pids.max");
        let v2 = format!("/sys/fs/cgroup/moat/{id}/pids.max");
        std::fs::read_to_string(v1)
            .or_else(|_| std::fs::read_to_string(v2))
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_eq!(pids_max(), "100");
    rt.ok(&["update", "--pids-limit", "42", "--memory", "64m", &id]);
    assert_eq!(pids_max(), "42");
    let stats: serde_json::Value =
        serde_json::from_str(&rt.ok(&["events", "--stats", &id])).unwrap();
    assert_eq!(stats["type"], "stats");
    assert_eq!(stats["data"]["memory"]["usage"]["limit"], 64 * 1024 * 1024);
    assert_eq!(stats["data"]["pids"]["limit"], 42);
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("r.json"), r#"{"pids": {"limit": 7}}"#).unwrap();
    rt.ok(&[
        "update",
        "--resources",
        d.path().join("r.json").to_str().unwrap(),
        &id,
    ]);
    assert_eq!(pids_max(), "7");
    // Zero values mean "unchanged", as in runc (what Docker sends for the fields it does not set).
    std::fs::write(
        d.path().join("zero.json"),
        r#"{"pids": {"limit": 0}, "cpu": {"shares": 0, "quota": 0, "period": 0},
            "blockIO": {"weight": 0}, "memory": {"limit": 0, "swap": 0, "disableOOMKiller": false}}"#,
    )
    .unwrap();
    rt.ok(&[
        "update",
        "-r",
        d.path().join("zero.json").to_str().unwrap(),
        &id,
    ]);
    assert_eq!(pids_max(), "7");
    // All or nothing: a refused part (cpu.shares 1, below the kernel's 2) leaves pids.max as is.
    std::fs::write(
        d.path().join("bad.json"),
        r#"{"pids": {"limit": 9}, "cpu": {"shares": 1}}"#,
    )
    .unwrap();
    let o = rt.out(&[
        "update",
        "-r",
        d.path().join("bad.json").to_str().unwrap(),
        &id,
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.starts_with("error: "), "{err}");
    assert!(err.contains("cpu.shares"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert_eq!(pids_max(), "7");
    let pid = rt.state(&id)["pid"].as_i64().unwrap();
    let pids: Vec<i64> = serde_json::from_str(&rt.ok(&["ps", "--format", "json", &id])).unwrap();
    assert_eq!(pids, vec![pid]);
    let table = rt.ok(&["ps", &id]);
    assert!(
        table.starts_with("UID") && table.contains("sleep 1000"),
        "{table}"
    );
    rt.ok(&["delete", "--force", &id]);
    assert_clean(&rt, &id, Some(b.path()));
}

#[test]
fn tiny_memory_limit_errors_or_works_but_never_hangs() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.spec["linux"]["resources"]["memory"] = json!({"limit": 512 * 1024});
    b.sh("echo tiny");
    let id = id("tiny");
    let mut child = rt
        .cmd()
        .args(["run", "--bundle"])
        .arg(b.path())
        .arg(&id)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(_st) = child.try_wait().unwrap() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "run with a 512k memory limit hung"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        (out.status.success() && so == "tiny\n")
            || se.starts_with("error: ")
            || out.status.code() == Some(137),
        "status {:?} stdout {so} stderr {se}",
        out.status
    );
    let _ = rt.out(&["delete", "--force", &id]);
    assert_clean(&rt, &id, Some(b.path()));
}

#[test]
fn unsupported_resource_values_are_refused_with_the_field() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.spec["linux"]["resources"]["cpu"] = json!({"cpus": "0-4095"});
    b.save();
    let id = id("badres");
    let o = rt.create_out(&b, &id, &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("error: ") && err.contains("linux.resources.cpu.cpus"),
        "{err}"
    );
    assert_clean(&rt, &id, Some(b.path()));
}

/// runc's rules for a cgroup that exists already: create into a frozen one fails at once (it used
/// to hang) and leaves nothing behind; into one that holds processes it warns and works.
#[test]
fn create_into_a_busy_cgroup_warns_and_into_a_frozen_one_fails_at_once() {
    let rt = Rt::new();
    let first = id("cgbusy");
    let path = format!("/moat-test/{first}");
    let mut b = Bundle::new(&["sleep", "100"]);
    b.spec["linux"]["cgroupsPath"] = json!(path);
    b.save();
    detach(&rt, &b, &first);

    rt.ok(&["pause", &first]);
    let frozen = id("cgfrozen");
    let start = Instant::now();
    let o = rt.create_out(&b, &frozen, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "create into a frozen cgroup succeeded");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    assert!(err.starts_with("error:") && err.contains("frozen"), "{err}");
    assert_clean(&rt, &frozen, Some(b.path()));
    rt.ok(&["resume", &first]);

    let second = id("cgbusy2");
    let o = rt.create_out(&b, &second, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("warning: container's cgroup is not empty: 1 process(es) found"),
        "{err}"
    );
    // Both share the cgroup: deleting either kills what is in it.
    rt.ok(&["delete", "--force", &second]);
    rt.ok(&["delete", "--force", &first]);
    for p in support::cgroup_paths("moat-test") {
        let _ = std::fs::remove_dir(p);
    }
}

/// With a writable cgroup mount, a container makes sub-cgroups of its own (and moves a process
/// there); `delete --force` removes them with the container's cgroup, on v1 (every controller of
/// this hybrid host) as on v2.
#[test]
fn delete_force_removes_the_sub_cgroups_a_container_made() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    for m in b.spec["mounts"].as_array_mut().unwrap() {
        if m["destination"] == "/sys/fs/cgroup" {
            m["options"] = json!(["nosuid", "noexec", "nodev", "rw"]);
        }
    }
    b.sh(concat!(
        "for c in /sys/fs/cgroup/pids /sys/fs/cgroup/memory /sys/fs/cgroup; do ",
        "[ -e $c/cgroup.procs ] && mkdir -p $c/sub/deeper && echo $$ > $c/sub/cgroup.procs && break; done; ",
        "echo made; sleep 100"
    ));
    let id = id("subcg");
    detach(&rt, &b, &id);
    let made = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        cgroup_dirs(&id)
            .iter()
            .any(|d| d.join("sub/deeper").exists())
    });
    assert!(made, "the container made no sub-cgroup");
    rt.ok(&["delete", "--force", &id]);
    assert_clean(&rt, &id, Some(b.path()));
}

/// `exec` joins every cgroup hierarchy of the container (each v1 controller and the unified one
/// on this hybrid host): seen from its cgroup namespace, every line of its /proc/self/cgroup is the
/// namespace's root (a hierarchy it did not join would show a path outside, like `/../..`).
#[test]
fn exec_joins_every_cgroup_of_the_container() {
    let rt = Rt::new();
    let b = Bundle::new(&["sleep", "100"]);
    let id = id("execcg");
    detach(&rt, &b, &id);
    let pid = rt.state(&id)["pid"].as_i64().unwrap();
    let init = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        init.lines().all(|l| l.ends_with(&format!("/moat/{id}"))),
        "{init}"
    );
    let seen = rt.ok(&["exec", &id, "cat", "/proc/self/cgroup"]);
    assert_eq!(seen.lines().count(), init.lines().count(), "{seen}");
    assert!(seen.lines().all(|l| l.ends_with(":/")), "{seen}");
    rt.ok(&["delete", "--force", &id]);
}

/// `events --stats` prints exactly one JSON object and exits; `events` streams one object per
/// interval and ends by itself once the container is deleted (as runc).
#[test]
fn events_stats_once_and_a_stream_that_ends_on_delete() {
    let rt = Rt::new();
    let b = Bundle::new(&["sleep", "100"]);
    let id = id("events");
    detach(&rt, &b, &id);
    let once = rt.ok(&["events", "--stats", &id]);
    assert_eq!(once.lines().count(), 1, "{once}");
    let v: serde_json::Value = serde_json::from_str(&once).unwrap();
    assert_eq!(
        (v["type"].as_str(), v["id"].as_str()),
        (Some("stats"), Some(id.as_str()))
    );
    assert!(
        v["data"]["pids"]["current"].as_u64().unwrap_or(0) >= 1,
        "{v}"
    );
    let stream = rt
        .cmd()
        .args(["events", "--interval", "200ms", &id])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(900));
    rt.ok(&["delete", "--force", &id]);
    let start = Instant::now();
    let out = stream.wait_with_output().unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "events went on after delete"
    );
    let lines = String::from_utf8_lossy(&out.stdout);
    assert!(lines.lines().count() >= 2, "{lines}");
    for l in lines.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["id"], id.as_str());
    }
}

/// A device deny rule given to `update` takes effect on the running container, on top of its own
/// rules: the denied device cannot be opened, the other default devices still can.
#[test]
fn update_with_a_device_deny_rule_takes_effect() {
    let rt = Rt::new();
    let b = Bundle::new(&["sleep", "100"]);
    let id = id("updev");
    detach(&rt, &b, &id);
    let probe = concat!(
        "for d in zero full null; do ",
        "(exec 3</dev/$d) 2>/dev/null && echo $d=open || echo $d=denied; done"
    );
    assert_eq!(
        rt.ok(&["exec", &id, "sh", "-c", probe]),
        "zero=open\nfull=open\nnull=open\n"
    );
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("dev.json");
    std::fs::write(
        &f,
        r#"{"devices": [{"allow": false, "type": "c", "major": 1, "minor": 5, "access": "rwm"}]}"#,
    )
    .unwrap();
    // The container's rules are those of create, kept in its state: an edited bundle does not
    // change them (nor break update).
    let config = std::fs::read(b.path().join("config.json")).unwrap();
    std::fs::write(b.path().join("config.json"), "{}").unwrap();
    rt.ok(&["update", "-r", f.to_str().unwrap(), &id]);
    std::fs::write(b.path().join("config.json"), config).unwrap(); // exec reads the bundle
    assert_eq!(
        rt.ok(&["exec", &id, "sh", "-c", probe]),
        "zero=denied\nfull=open\nnull=open\n"
    );
    rt.ok(&["delete", "--force", &id]);
}
