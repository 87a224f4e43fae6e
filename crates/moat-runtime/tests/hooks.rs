//! OCI hooks: every kind runs at its point of the lifecycle with the state JSON on stdin, its args
//! and env; a timeout kills a hung hook; a failing creation hook aborts create and leaves nothing.

mod common;
use common::*;
use serde_json::json;

/// A hook that appends "<name> <status> <pid>" to `log` (a host path) using the host's shell.
fn hook(name: &str, log: &std::path::Path) -> serde_json::Value {
    json!({
        "path": "/bin/sh",
        "args": ["sh", "-c", format!("read -r s; st=$(echo \"$s\" | sed -n 's/.*\"status\":\"\\([a-z]*\\)\".*/\\1/p'); echo \"{name} $st $HOOK_VAR\" >> {}", log.display())],
        "env": ["HOOK_VAR=from-env", "PATH=/usr/bin:/bin"]
    })
}

#[test]
fn every_hook_runs_in_order_with_state_on_stdin() {
    let rt = Rt::new();
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("hooks.log");
    let mut b = Bundle::new(&["true"]);
    // createContainer and startContainer run inside the container's mount namespace: the host
    // path of the log is reachable there only through a bind mount at the same path.
    b.spec["mounts"].as_array_mut().unwrap().push(
        json!({"destination": d.path(), "type": "bind", "source": d.path(), "options": ["bind"]}),
    );
    // Host /bin/sh and sed are needed inside for the in-container hooks: bind /usr and /lib too.
    for p in ["/usr", "/lib", "/lib64"] {
        if std::path::Path::new(p).exists()
            && !std::fs::symlink_metadata(p)
                .unwrap()
                .file_type()
                .is_symlink()
        {
            b.spec["mounts"].as_array_mut().unwrap().push(
                json!({"destination": p, "type": "bind", "source": p, "options": ["rbind", "ro"]}),
            );
        }
    }
    let hooks = json!({
        "prestart": [hook("prestart", &log)],
        "createRuntime": [hook("createRuntime", &log)],
        "createContainer": [hook("createContainer", &log)],
        "startContainer": [hook("startContainer", &log)],
        "poststart": [hook("poststart", &log)],
        "poststop": [hook("poststop", &log)]
    });
    b.spec["hooks"] = hooks;
    b.spec["process"]["args"] = json!(["/bin/sh", "-c", "echo user-process >> LOG"]);
    b.spec["process"]["args"][2] = json!(format!("echo user-process >> {}", log.display()));
    b.save();
    let id = id("hooks");
    rt.create(&b, &id);
    rt.ok(&["start", &id]);
    rt.wait_status(&id, "stopped");
    rt.ok(&["delete", &id]);
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            "createContainer creating from-env",
            "createRuntime creating from-env",
            "poststart running from-env",
            "poststop stopped from-env",
            "prestart creating from-env",
            "startContainer creating from-env",
            "user-process",
        ],
        "hook log:\n{text}"
    );
    // The user process runs after startContainer, concurrently with poststart (which runs once
    // it has been executed), and before poststop.
    // Order: creation hooks, then startContainer before the user process, poststop last.
    let pos = |s: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(s))
            .unwrap_or_else(|| panic!("{s} missing:\n{text}"))
    };
    assert!(pos("prestart") < pos("createRuntime"));
    assert!(pos("createRuntime") < pos("createContainer"));
    assert!(pos("createContainer") < pos("startContainer"));
    assert!(pos("startContainer") < pos("user-process"));
    assert!(pos("startContainer") < pos("poststart"));
    assert!(pos("user-process") < pos("poststop"));
    assert!(pos("poststart") < pos("poststop"));
    assert_eq!(lines.last().unwrap(), &"poststop stopped from-env");
    assert_clean(&rt, &id, Some(b.path()));
}

#[test]
fn a_failing_prestart_hook_aborts_create_and_leaves_nothing() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.spec["hooks"] =
        json!({"prestart": [{"path": "/bin/sh", "args": ["sh", "-c", "echo no way >&2; exit 3"]}]});
    b.save();
    let id = id("hookfail");
    let o = rt.create_out(&b, &id, &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("error: ")
            && err.contains("prestart hook /bin/sh")
            && err.contains("no way"),
        "{err}"
    );
    assert_clean(&rt, &id, Some(b.path()));
}

#[test]
fn a_hung_hook_is_killed_at_its_timeout() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.spec["hooks"] =
        json!({"createRuntime": [{"path": "/bin/sleep", "args": ["sleep", "600"], "timeout": 1}]});
    b.save();
    let id = id("hooktimeout");
    let t = std::time::Instant::now();
    let o = rt.create_out(&b, &id, &[]);
    assert!(!o.status.success());
    assert!(t.elapsed() < std::time::Duration::from_secs(10));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("timed out after 1s"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        pids_with_cmdline("sleep 600").is_empty(),
        "the timed-out hook is still running"
    );
    assert_clean(&rt, &id, Some(b.path()));
}

/// A failing poststart hook makes `start` fail and stops the container, as runc does (before,
/// moat only warned and the container ran on).
#[test]
fn a_failing_poststart_hook_fails_start_and_stops_the_container() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["sleep", "100"]);
    b.spec["hooks"] =
        json!({"poststart": [{"path": "/bin/sh", "args": ["sh", "-c", "echo nope >&2; exit 3"]}]});
    b.save();
    let id = id("poststartfail");
    rt.create(&b, &id);
    let o = rt.out(&["start", &id]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "start succeeded: {err}");
    assert!(
        err.starts_with("error:") && err.contains("poststart"),
        "{err}"
    );
    assert_eq!(rt.status(&id), "stopped");
    rt.ok(&["delete", &id]);
    assert_clean(&rt, &id, Some(b.path()));
    // runc, the reference (1.1 runs poststart already at `create`): `run` fails and stops it.
    if let Some(runc) = Runc::new() {
        let rid = format!("{id}-runc");
        let (code, _, _) = runc.run(&b, &rid, &["-d"]);
        assert_ne!(code, 0, "runc ran on after a failing poststart hook");
    }
}

/// Hooks the init runs in the container: without `env` they get the process's environment, with
/// one exactly that (runc and youki alike).
#[test]
fn container_hooks_get_the_process_env_unless_they_have_their_own() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.spec["process"]["env"] = json!(["PATH=/bin", "FOO=from-process"]);
    let dump = |file: &str| format!("/bin/busybox env > /{file}");
    // createContainer runs before the root switch: paths are the host's (busybox-static there too).
    let cc = format!("/bin/busybox env > {}/cc-none", b.rootfs().display());
    b.spec["hooks"] = json!({
        "createContainer": [{"path": "/bin/busybox", "args": ["sh", "-c", cc]}],
        "startContainer": [
            {"path": "/bin/sh", "args": ["sh", "-c", dump("sc-none")]},
            {"path": "/bin/sh", "args": ["sh", "-c", dump("sc-own")], "env": ["ONLY=hook"]}
        ]
    });
    b.save();
    let read = |f: &str| std::fs::read_to_string(b.rootfs().join(f)).unwrap_or_default();
    let check = |who: &str| {
        for f in ["cc-none", "sc-none"] {
            let env = read(f);
            assert!(
                env.lines().any(|l| l == "FOO=from-process"),
                "{who} {f}: {env}"
            );
        }
        let own = read("sc-own");
        assert!(own.lines().any(|l| l == "ONLY=hook"), "{who} sc-own: {own}");
        assert!(!own.contains("FOO="), "{who} sc-own: {own}");
    };
    rt.run_ok(&b, &id("hookenv"));
    check("moat");
    if let Some(runc) = Runc::new() {
        for f in ["cc-none", "sc-none", "sc-own"] {
            let _ = std::fs::remove_file(b.rootfs().join(f));
        }
        let (code, _, err) = runc.run(&b, &id("hookenv-runc"), &[]);
        assert_eq!(code, 0, "runc: {err}");
        check("runc");
    }
}
