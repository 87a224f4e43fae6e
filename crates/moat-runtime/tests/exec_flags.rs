//! `exec` as runc 1.1 behaves: `--cap` (the five capability sets compared with runc's on the same
//! bundle), exec into a `created` container, `--ignore-paused`, `--cgroup CTRL:PATH`, and a
//! `--pid-file` that cannot be written.

mod common;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::support::{run_deadline, which};
use common::*;

fn started(rt: &Rt, b: &Bundle, id: &str) {
    rt.create(b, id);
    rt.ok(&["start", id]);
}

fn cap_lines(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| l.starts_with("Cap"))
        .map(str::to_owned)
        .collect()
}

const CAPS: &[&str] = &["--cap", "CAP_NET_ADMIN", "--cap", "CAP_SYS_TIME"];

#[test]
fn exec_cap_sets_as_runc() {
    let rt = Rt::new();
    let b = Bundle::new(&["sleep", "1000"]);
    let id = id("execcap");
    started(&rt, &b, &id);
    let mut args = vec!["exec"];
    args.extend_from_slice(CAPS);
    args.extend_from_slice(&[&id, "grep", "^Cap", "/proc/self/status"]);
    let ours = cap_lines(&rt.ok(&args));
    rt.ok(&["delete", "--force", &id]);
    assert_clean(&rt, &id, Some(b.path()));
    assert_eq!(ours.len(), 5, "{ours:?}");
    let set = |name: &str| -> u64 {
        let l = ours.iter().find(|l| l.starts_with(name)).unwrap();
        u64::from_str_radix(l.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    let (net_admin, sys_time) = (1u64 << 12, 1u64 << 25);
    for s in ["CapBnd", "CapPrm", "CapEff"] {
        assert_eq!(
            set(s) & (net_admin | sys_time),
            net_admin | sys_time,
            "{s}: {ours:?}"
        );
    }
    // Never inheritable (CVE-2022-29162), hence not ambient either.
    assert_eq!(set("CapInh") & (net_admin | sys_time), 0, "{ours:?}");
    assert_eq!(set("CapAmb") & (net_admin | sys_time), 0, "{ours:?}");
    let Some(runc) = which("runc") else { return };
    let root = tempfile::tempdir().unwrap();
    let runc_cmd = |args: &[&str]| -> std::process::Output {
        run_deadline(
            Command::new(&runc)
                .arg("--root")
                .arg(root.path())
                .args(args),
            Duration::from_secs(30),
            "runc",
        )
    };
    let bundle = b.path().to_str().unwrap();
    assert!(runc_cmd(&["create", "--bundle", bundle, &id])
        .status
        .success());
    assert!(runc_cmd(&["start", &id]).status.success());
    let mut args = vec!["exec"];
    args.extend_from_slice(CAPS);
    args.extend_from_slice(&[&id, "grep", "^Cap", "/proc/self/status"]);
    let theirs = runc_cmd(&args);
    runc_cmd(&["delete", "--force", &id]);
    assert_eq!(
        ours,
        cap_lines(&String::from_utf8_lossy(&theirs.stdout)),
        "runc: {}",
        String::from_utf8_lossy(&theirs.stderr)
    );
}

#[test]
fn exec_into_created_container() {
    let rt = Rt::new();
    let b = Bundle::new(&["sleep", "1000"]);
    let id = id("execcr");
    rt.create(&b, &id);
    let out = rt.ok(&[
        "exec",
        &id,
        "sh",
        "-c",
        "echo in-created; cat /proc/1/cmdline",
    ]);
    assert!(out.starts_with("in-created\n"), "{out}");
    assert_eq!(rt.status(&id), "created");
    rt.ok(&["delete", "--force", &id]);
    assert_clean(&rt, &id, Some(b.path()));
}

#[test]
fn exec_into_paused_needs_ignore_paused() {
    let rt = Rt::new();
    let b = Bundle::new(&["sleep", "1000"]);
    let id = id("execpz");
    started(&rt, &b, &id);
    rt.ok(&["pause", &id]);
    let o = rt.out(&["exec", &id, "true"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.starts_with("error: ")
            && err.contains("cannot exec in a paused container (use --ignore-paused to override)"),
        "{err}"
    );
    // Accepted with the flag: the process joins the frozen cgroup and runs once resumed.
    let child = rt
        .cmd()
        .args(["exec", "--ignore-paused", &id, "echo", "ran"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    rt.ok(&["resume", &id]);
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "ran\n");
    rt.ok(&["delete", "--force", &id]);
    assert_clean(&rt, &id, Some(b.path()));
}

#[test]
fn exec_into_sub_cgroup() {
    let rt = Rt::new();
    let b = Bundle::new(&["sleep", "1000"]);
    let id = id("execcg");
    started(&rt, &b, &id);
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let (flag, ctrl) = if v2 {
        ("sub", "")
    } else {
        ("pids:sub", "pids")
    };
    let dir = cgroup_dirs(&id)
        .into_iter()
        .find(|d| v2 || d.starts_with("/sys/fs/cgroup/pids"))
        .unwrap();
    // Missing sub-cgroup: refused, naming it.
    let o = rt.out(&["exec", "--cgroup", flag, &id, "true"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("sub-cgroup") && err.contains("sub"),
        "{err}"
    );
    std::fs::create_dir(dir.join("sub")).unwrap();
    let out = rt.ok(&["exec", "--cgroup", flag, &id, "cat", "/proc/self/cgroup"]);
    let line = out
        .lines()
        .find(|l| l.split(':').nth(1) == Some(ctrl))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.ends_with("/sub"), "{out}");
    if !v2 {
        let mem = out.lines().find(|l| l.split(':').nth(1) == Some("memory"));
        assert!(mem.is_some_and(|l| !l.ends_with("/sub")), "{out}");
    }
    // `..` never leaves the container's cgroup.
    let o = rt.out(&["exec", "--cgroup", "../..", &id, "true"]);
    assert!(!o.status.success());
    rt.ok(&["delete", "--force", &id]);
    assert_clean(&rt, &id, Some(b.path()));
}

#[test]
fn exec_pid_file_in_missing_directory_leaves_nothing() {
    let rt = Rt::new();
    let b = Bundle::new(&["sleep", "1000"]);
    let id = id("execpf");
    started(&rt, &b, &id);
    let missing = b.path().join("missing");
    let pf = missing.join("dir/exec.pid");
    let o = rt.out(&[
        "exec",
        "--pid-file",
        pf.to_str().unwrap(),
        &id,
        "sleep",
        "777",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.starts_with("error: ") && err.lines().count() == 1,
        "{err}"
    );
    // runc: `open <dir>/.exec.pid: no such file or directory`.
    assert!(
        err.contains(missing.join("dir/.exec.pid").to_str().unwrap()),
        "{err}"
    );
    assert!(!missing.exists());
    let init = rt.state(&id)["pid"].as_i64().unwrap() as i32;
    let pids: Vec<i32> = serde_json::from_str(&rt.ok(&["ps", "--format", "json", &id])).unwrap();
    assert_eq!(pids, vec![init], "the exec'd process is left running");
    assert!(pids_with_cmdline("sleep 777").is_empty());
    rt.ok(&["delete", "--force", &id]);
    assert_clean(&rt, &id, Some(b.path()));
}
