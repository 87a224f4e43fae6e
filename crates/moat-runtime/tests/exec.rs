//! `exec`: a process that joins every namespace and the cgroup of a running container, with the
//! container's security settings, its exit code returned; with a tty through a console socket.

mod common;
use common::*;
use serde_json::json;

fn started(rt: &Rt, b: &Bundle, id: &str) {
    rt.create(b, id);
    rt.ok(&["start", id]);
}

#[test]
fn exec_joins_namespaces_and_cgroup_and_returns_exit_code() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["sleep", "1000"]);
    b.spec["hostname"] = json!("exec-host");
    b.spec["process"]["env"] = json!(["PATH=/bin", "FROM_SPEC=yes"]);
    b.save();
    let id = id("exec");
    started(&rt, &b, &id);
    let init = rt.state(&id)["pid"].as_i64().unwrap();
    let o = rt.out(&["exec", &id, "sh", "-c", "hostname; echo $FROM_SPEC; echo pid=$$; cat /proc/1/cmdline | tr '\\0' ' '; echo; for n in pid net ipc uts mnt cgroup; do readlink /proc/self/ns/$n; done; exit 5"]);
    assert_eq!(
        o.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "exec-host");
    assert_eq!(lines[1], "yes");
    assert_ne!(lines[2], "pid=1");
    assert_eq!(lines[3].trim(), "sleep 1000");
    for (i, n) in ["pid", "net", "ipc", "uts", "mnt", "cgroup"]
        .iter()
        .enumerate()
    {
        let init_ns = std::fs::read_link(format!("/proc/{init}/ns/{n}")).unwrap();
        assert_eq!(
            lines[4 + i],
            init_ns.to_string_lossy(),
            "{n} namespace differs"
        );
    }
    // In the container's cgroup while it runs.
    // Detached: its stdio must not be a pipe we wait on.
    let st = rt
        .cmd()
        .args([
            "exec",
            "-d",
            "--pid-file",
            b.path().join("exec.pid").to_str().unwrap(),
            &id,
            "sleep",
            "30",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let pid: i32 = std::fs::read_to_string(b.path().join("exec.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let pids: Vec<i32> = serde_json::from_str(&rt.ok(&["ps", "--format", "json", &id])).unwrap();
    assert!(
        pids.contains(&pid),
        "exec'd process {pid} not in the container's cgroup: {pids:?}"
    );
    rt.ok(&["delete", "--force", &id]);
    assert_clean(&rt, &id, Some(b.path()));
}

#[test]
fn exec_gets_the_container_security_unless_overridden() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["sleep", "1000"]);
    b.spec["process"]["noNewPrivileges"] = json!(true);
    b.spec["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 321, "hard": 321}]);
    b.save();
    let id = id("execsec");
    started(&rt, &b, &id);
    let script = "grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; ulimit -n; id -u";
    let init = rt.state(&id)["pid"].as_i64().unwrap();
    let init_status = std::fs::read_to_string(format!("/proc/{init}/status")).unwrap();
    let init_eff = init_status
        .lines()
        .find(|l| l.starts_with("CapEff"))
        .unwrap()
        .to_owned();
    let out = rt.ok(&["exec", &id, "sh", "-c", script]);
    assert!(
        out.contains(&init_eff),
        "exec caps differ from init's {init_eff}: {out}"
    );
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("\n321\n0\n"), "{out}");
    let out = rt.ok(&[
        "exec",
        "--user",
        "1000:1000",
        "--cap",
        "CAP_NET_RAW",
        &id,
        "sh",
        "-c",
        "id -u; id -g; grep CapBnd /proc/self/status",
    ]);
    assert!(out.starts_with("1000\n1000\n"), "{out}");
    let bnd = u64::from_str_radix(
        out.lines()
            .last()
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap(),
        16,
    )
    .unwrap();
    assert!(bnd & (1 << 13) != 0, "CAP_NET_RAW not added: {out}");
    rt.ok(&["delete", "--force", &id]);
}

#[test]
fn exec_with_process_json_and_env_cwd() {
    let rt = Rt::new();
    let b = Bundle::new(&["sleep", "1000"]);
    let id = id("execjson");
    started(&rt, &b, &id);
    let out = rt.ok(&[
        "exec",
        "-e",
        "A=1",
        "--cwd",
        "/tmp",
        &id,
        "sh",
        "-c",
        "echo $A $(pwd)",
    ]);
    assert_eq!(out, "1 /tmp\n");
    let p = b.path().join("process.json");
    std::fs::write(&p, serde_json::to_vec(&json!({"user": {"uid": 0, "gid": 0}, "args": ["sh", "-c", "echo from-json $X"], "env": ["PATH=/bin", "X=y"], "cwd": "/"})).unwrap()).unwrap();
    let out = rt.ok(&["exec", "--process", p.to_str().unwrap(), &id]);
    assert_eq!(out, "from-json y\n");
    rt.ok(&["delete", "--force", &id]);
}

#[test]
fn exec_failures_are_clear() {
    let rt = Rt::new();
    let b = Bundle::new(&["sleep", "1000"]);
    let id = id("execbad");
    started(&rt, &b, &id);
    let o = rt.out(&["exec", &id, "no-such-binary"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("error: exec in container") && err.contains("no-such-binary"),
        "{err}"
    );
    let o = rt.out(&["exec", "missing-container", "true"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not exist"));
    rt.ok(&["kill", &id, "KILL"]);
    rt.wait_status(&id, "stopped");
    let o = rt.out(&["exec", &id, "true"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("stopped"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    rt.ok(&["delete", &id]);
    assert_clean(&rt, &id, Some(b.path()));
}

#[test]
fn exec_with_tty_through_console_socket() {
    use std::io::{Read, Write};
    let rt = Rt::new();
    let b = Bundle::new(&["sleep", "1000"]);
    let id = id("exectty");
    started(&rt, &b, &id);
    let d = tempfile::tempdir().unwrap();
    let sock = d.path().join("c.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let mut child = rt
        .cmd()
        .args([
            "exec",
            "-t",
            "--console-socket",
            sock.to_str().unwrap(),
            &id,
            "sh",
            "-c",
            "tty; read x; echo got-$x",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (_, master) = accept_fd(&listener);
    let mut m: std::fs::File = master.into();
    m.write_all(b"abc\n").unwrap();
    let mut out = Vec::new();
    let mut chunk = [0u8; 256];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !String::from_utf8_lossy(&out).contains("got-abc") && std::time::Instant::now() < deadline
    {
        match m.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.contains("/dev/pts/") && text.contains("got-abc"),
        "{text}"
    );
    assert!(child.wait().unwrap().success());
    rt.ok(&["delete", "--force", &id]);
}

/// Under load, `exec` must wait for the process itself: the process forked into the container's
/// pid namespace could report `Ready` before stage 1 named it (`InitPid`), and the runtime then
/// waited for stage 1 (exit 0) and returned before the process had written anything (about one
/// exec in fifty lost its output with six in parallel). 6 × 30 concurrent execs, each output on a file and read at once.
#[test]
fn concurrent_execs_each_wait_for_their_process() {
    let rt = Rt::new();
    let b = Bundle::new(&["sleep", "1000"]);
    let id = id("execrace");
    started(&rt, &b, &id);
    std::thread::scope(|s| {
        for t in 0..6 {
            let (rt, id) = (&rt, &id);
            s.spawn(move || {
                for i in 0..30 {
                    // stdout on a file, read as soon as exec returns (a pipe would hide the bug:
                    // its reader waits for the last writer, the process, whatever exec does).
                    let out = tempfile::NamedTempFile::new().unwrap();
                    let st = rt
                        .cmd()
                        .args(["exec", id, "sh", "-c", &format!("echo out-{t}-{i}")])
                        .stdout(out.reopen().unwrap())
                        .status()
                        .unwrap();
                    assert!(st.success(), "exec {i} of thread {t}: {st}");
                    assert_eq!(
                        std::fs::read_to_string(out.path()).unwrap(),
                        format!("out-{t}-{i}\n"),
                        "exec {i} of thread {t} returned before its process wrote"
                    );
                }
            });
        }
    });
    rt.ok(&["delete", "--force", &id]);
}
