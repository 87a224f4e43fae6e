//! VM isolation through the ordinary runtime commands: a bundle annotated
//! `io.moat.isolation=vm` runs in a QEMU microvm (under TCG here) booted by `create`, reattached
//! by every later command, and gone after `delete`.

mod common;
use common::*;
#[path = "support/vm_agent.rs"]
mod vm_agent;
use vm_agent::agent;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `moat-runtime --root <rt> ARGS` with the agent binary in the environment.
fn vm_cmd(rt: &Rt, args: &[&str]) -> Command {
    let mut c = rt.cmd();
    c.env("MOAT_AGENT_BIN", agent()).args(args);
    c
}

fn vm_ok(rt: &Rt, args: &[&str]) -> Output {
    // stdout/stderr on files: a detached QEMU would otherwise hold our pipes open.
    let out = tempfile::NamedTempFile::new().unwrap();
    let err = tempfile::NamedTempFile::new().unwrap();
    let st = vm_cmd(rt, args)
        .stdout(out.reopen().unwrap())
        .stderr(err.reopen().unwrap())
        .status()
        .unwrap();
    let o = Output {
        status: st,
        stdout: std::fs::read(out.path()).unwrap(),
        stderr: std::fs::read(err.path()).unwrap(),
    };
    assert!(
        o.status.success(),
        "moat-runtime {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn vm_bundle(args: &[&str]) -> Bundle {
    let mut b = Bundle::new(args);
    b.spec["annotations"] = serde_json::json!({"io.moat.isolation": "vm"});
    b.save();
    b
}

fn host_release() -> String {
    nix::sys::utsname::uname()
        .unwrap()
        .release()
        .to_string_lossy()
        .into_owned()
}

/// No live process (zombies aside) mentions the container's state dir.
fn assert_no_qemu(rt: &Rt, id: &str) {
    let dir = rt.root.path().join(id);
    let left = pids_with_cmdline(&dir.to_string_lossy());
    assert!(left.is_empty(), "processes left for {id}: {left:?}");
}

#[test]
fn vm_run_prints_the_guest_kernel_and_returns_the_exit_code() {
    let rt = Rt::new();
    let b = vm_bundle(&["sh", "-c", "uname -r; echo to-stderr >&2; exit 7"]);
    let id = id("vmrun");
    let t = Instant::now();
    let o = vm_cmd(&rt, &["run", "--bundle", b.path().to_str().unwrap(), &id])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    eprintln!("run: {:?}", t.elapsed());
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(7),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    let guest = stdout.trim();
    let kernel = moat_vm::assets::cached_kernel(&moat_vm::assets::cache_dir()).unwrap();
    assert_eq!(guest, kernel.release, "stderr: {stderr}");
    assert_ne!(guest, host_release());
    assert!(stderr.contains("to-stderr"), "{stderr}");
    assert_clean(&rt, &id, Some(b.path()));
    assert_no_qemu(&rt, &id);
}

#[test]
fn vm_lifecycle_across_invocations() {
    let rt = Rt::new();
    let b = vm_bundle(&["sleep", "600"]);
    let id = id("vmlife");
    let t = Instant::now();
    vm_ok(
        &rt,
        &["create", "--bundle", b.path().to_str().unwrap(), &id],
    );
    eprintln!("create: {:?}", t.elapsed());
    let st = rt.state(&id);
    assert_eq!(st["status"], "created");
    assert_eq!(st["annotations"]["io.moat.isolation"], "vm", "state: {st}");
    let pid = st["pid"].as_i64().unwrap() as i32;
    assert!(pid > 0);
    assert!(
        std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .unwrap()
            .contains("qemu"),
        "the pid of a VM container is its QEMU"
    );
    let t = Instant::now();
    vm_ok(&rt, &["start", &id]);
    eprintln!("start: {:?}", t.elapsed());
    assert_eq!(rt.status(&id), "running");
    // Still running a moment later: the guest did not end when `start` disconnected.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rt.status(&id), "running");
    // delete without --force refuses a running container.
    let o = vm_cmd(&rt, &["delete", &id]).output().unwrap();
    assert!(!o.status.success());
    let t = Instant::now();
    vm_ok(&rt, &["kill", &id, "KILL"]);
    rt.wait_status(&id, "stopped");
    eprintln!("kill to stopped: {:?}", t.elapsed());
    vm_ok(&rt, &["delete", &id]);
    assert_clean(&rt, &id, Some(b.path()));
    assert_no_qemu(&rt, &id);
    assert!(
        moat_sys::process::start_time(pid).is_none(),
        "qemu {pid} alive"
    );
}

#[test]
fn vm_killed_qemu_reads_stopped_and_delete_cleans_up() {
    let rt = Rt::new();
    let b = vm_bundle(&["sleep", "600"]);
    let id = id("vmdead");
    vm_ok(
        &rt,
        &["create", "--bundle", b.path().to_str().unwrap(), &id],
    );
    vm_ok(&rt, &["start", &id]);
    let st = rt.state(&id);
    assert_eq!(st["status"], "running");
    let pid = st["pid"].as_i64().unwrap() as i32;
    let dir = rt.root.path().join(&id);
    assert!(dir.join("rootfs.ext4").exists());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    rt.wait_status(&id, "stopped");
    assert_eq!(rt.state(&id)["pid"], 0);
    // kill of a stopped VM container fails cleanly.
    let o = vm_cmd(&rt, &["kill", &id, "TERM"]).output().unwrap();
    assert!(!o.status.success());
    vm_ok(&rt, &["delete", &id]);
    assert_clean(&rt, &id, Some(b.path()));
    assert_no_qemu(&rt, &id);
}

#[test]
fn vm_run_forwards_signals_through_the_agent() {
    let rt = Rt::new();
    let b = vm_bundle(&[
        "sh",
        "-c",
        "trap 'echo got-term; exit 42' TERM; echo ready; while true; do sleep 0.1; done",
    ]);
    let id = id("vmsig");
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut child = vm_cmd(&rt, &["run", "--bundle", b.path().to_str().unwrap(), &id])
        .stdout(out.reopen().unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(out.path())
        .unwrap()
        .contains("ready")
    {
        assert!(Instant::now() < deadline, "the container never started");
        assert!(child.try_wait().unwrap().is_none(), "run ended early");
        std::thread::sleep(Duration::from_millis(50));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(42));
    assert!(std::fs::read_to_string(out.path())
        .unwrap()
        .contains("got-term"));
    assert_clean(&rt, &id, Some(b.path()));
    assert_no_qemu(&rt, &id);
}
