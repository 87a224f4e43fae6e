//! Bad input gets one clear `error:` line naming the field or path, and leaves nothing behind;
//! so does a runtime killed with SIGKILL in the middle of `create`.

mod common;
use common::*;
use serde_json::json;

fn create_fails(rt: &Rt, b: &Bundle, id: &str) -> String {
    let o = rt.create_out(b, id, &[]);
    assert!(!o.status.success(), "create {id} should fail");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_clean(rt, id, Some(b.path()));
    err
}

#[test]
fn bad_json() {
    let rt = Rt::new();
    let b = Bundle::new(&["true"]);
    std::fs::write(
        b.path().join("config.json"),
        "{\"ociVersion\": \"1.0.0\", \"process\": ",
    )
    .unwrap();
    let err = create_fails(&rt, &b, &id("badjson"));
    assert!(
        err.contains("config.json") && err.contains("line 1"),
        "{err}"
    );
}

#[test]
fn missing_root() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.spec.as_object_mut().unwrap().remove("root");
    b.save();
    let err = create_fails(&rt, &b, &id("noroot"));
    assert!(err.contains("root"), "{err}");
    let mut b = Bundle::new(&["true"]);
    b.spec["root"]["path"] = json!("does-not-exist");
    b.save();
    let err = create_fails(&rt, &b, &id("noroot2"));
    assert!(
        err.contains("root.path") && err.contains("does-not-exist"),
        "{err}"
    );
}

#[test]
fn unknown_namespace() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.spec["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .insert(1, json!({"type": "bogus"}));
    b.save();
    let err = create_fails(&rt, &b, &id("badns"));
    assert!(
        err.contains("linux.namespaces[1].type") && err.contains("bogus"),
        "{err}"
    );
}

#[test]
fn bad_mounts() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.spec["mounts"].as_array_mut().unwrap().push(json!({"destination": "/data", "type": "bind", "source": "/nonexistent/source", "options": ["rbind"]}));
    b.save();
    let err = create_fails(&rt, &b, &id("badmount"));
    assert!(
        err.contains("/nonexistent/source") && err.contains("No such file"),
        "{err}"
    );

    let mut b = Bundle::new(&["true"]);
    b.spec["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/data", "type": "nosuchfs", "source": "x"}));
    b.save();
    let err = create_fails(&rt, &b, &id("badfs"));
    assert!(err.contains("/data") && err.contains("nosuchfs"), "{err}");

    let mut b = Bundle::new(&["true"]);
    b.spec["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "relative/path", "type": "tmpfs", "source": "tmpfs"}));
    b.save();
    let err = create_fails(&rt, &b, &id("relmount"));
    assert!(
        err.contains("mounts[") && err.contains("destination"),
        "{err}"
    );
}

#[test]
fn missing_executable_and_bad_user_fail_at_create() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.args(&["no-such-program"]);
    let err = create_fails(&rt, &b, &id("noexe"));
    assert!(
        err.contains("no-such-program") && err.contains("PATH"),
        "{err}"
    );
    let mut b = Bundle::new(&["true"]);
    b.spec["linux"]["sysctl"] = json!({"../../etc/passwd": "x"});
    b.save();
    let err = create_fails(&rt, &b, &id("badsysctl"));
    assert!(err.contains("sysctl"), "{err}");
}

#[test]
fn invalid_ids_and_missing_bundles() {
    let rt = Rt::new();
    let b = Bundle::new(&["true"]);
    for bad in ["../escape", "a/b", ".hidden"] {
        let o = rt.create_out(&b, bad, &[]);
        assert!(!o.status.success());
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("invalid"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let o = rt
        .cmd()
        .args(["create", "--bundle", "/nonexistent-bundle", "x1"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent-bundle/config.json"));
    assert_clean(&rt, "x1", None);
}

/// `kill -9` of the runtime at many points of `create`, then `delete --force`: nothing remains.
#[test]
fn sigkill_during_create_then_delete_force_leaves_nothing() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    // A slow createRuntime hook keeps create busy at a known point for the first round.
    b.spec["hooks"] = json!({"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "sleep 30 # moat-fault-hook"]}]});
    b.save();
    let id0 = id("kill9");
    let mut child = rt
        .cmd()
        .args(["create", "--bundle"])
        .arg(b.path())
        .arg(&id0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while pids_with_cmdline("moat-fault-hook").is_empty() {
        assert!(std::time::Instant::now() < deadline, "hook never started");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let cg_procs = cgroup_dirs(&id0)[0].join("cgroup.procs");
    assert!(
        !std::fs::read_to_string(&cg_procs)
            .unwrap()
            .trim()
            .is_empty(),
        "the init should be in its cgroup"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    for p in pids_with_cmdline("moat-fault-hook") {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    rt.ok(&["delete", "--force", &id0]);
    assert_clean(&rt, &id0, Some(b.path()));

    // Then at arbitrary points, without the hook.
    let b = Bundle::new(&["sleep", "100"]);
    for i in 0..15u64 {
        let id = format!("kill9-{}-{i}", std::process::id());
        let mut child = rt
            .cmd()
            .args(["create", "--bundle"])
            .arg(b.path())
            .arg(&id)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_micros(i * 1500));
        let _ = child.kill();
        child.wait().unwrap();
        rt.ok(&["delete", "--force", &id]);
        assert_clean(&rt, &id, Some(b.path()));
    }
    assert!(
        pids_with_cmdline(&b.path().to_string_lossy()).is_empty(),
        "a runtime or init process survived"
    );
}

#[test]
fn namespace_listed_twice_is_refused_by_name_but_empty_path_means_new() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["readlink", "/proc/self/ns/cgroup"]);
    let others: Vec<serde_json::Value> = b.spec["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["type"] != "cgroup")
        .cloned()
        .collect();
    let mut twice = others.clone();
    twice.push(json!({"type": "pid"}));
    b.spec["linux"]["namespaces"] = json!(twice);
    b.save();
    let err = create_fails(&rt, &b, &id("ns2"));
    assert!(err.contains("namespace \"pid\" is listed twice"), "{err}");
    // The cgroup namespace as Go tools write it (`path` left at its zero value, which runc reads
    // as "create a new one").
    let mut with_cgroup = others;
    with_cgroup.push(json!({"type": "cgroup", "path": ""}));
    b.spec["linux"]["namespaces"] = json!(with_cgroup);
    b.save();
    let id = id("nscg");
    let out = rt.run_ok(&b, &id);
    let host = std::fs::read_link("/proc/self/ns/cgroup").unwrap();
    assert!(out.starts_with("cgroup:["), "{out}");
    assert_ne!(
        out.trim(),
        host.to_string_lossy(),
        "no new cgroup namespace"
    );
    assert_clean(&rt, &id, Some(b.path()));
}

#[test]
fn unified_resources_on_a_v1_host_are_refused_as_runc() {
    if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        eprintln!("skipped: this host is pure cgroup v2");
        return;
    }
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.spec["linux"]["resources"]["unified"] = json!({"memory.max": "100000000"});
    b.save();
    let err = create_fails(&rt, &b, &id("unified"));
    assert!(
        err.contains("linux.resources.unified")
            && err.contains("invalid configuration: cannot use unified on cgroup v1"),
        "{err}"
    );
}
