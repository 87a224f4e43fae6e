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

/// `moat-runtime exec ID sh -c SCRIPT` in a VM container.
fn vm_sh(rt: &Rt, id: &str, script: &str) -> Command {
    vm_cmd(rt, &["exec", id, "sh", "-c", script])
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
    let b = vm_bundle(&[
        "sh",
        "-c",
        "uname -r; echo to-stderr >&2; echo written > /tmp/from-guest; exit 7",
    ]);
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
    // The rootfs is the bundle's, shared (not a copy): the guest's write is on the host.
    assert_eq!(
        std::fs::read_to_string(b.rootfs().join("tmp/from-guest")).unwrap(),
        "written\n"
    );
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
    // Which accelerator was chosen is reported (this host's KVM cannot run a stock guest).
    let accel = st["annotations"]["io.moat.vm.accelerator"]
        .as_str()
        .unwrap_or_default();
    assert!(matches!(accel, "kvm" | "tcg"), "state: {st}");
    if std::env::var("MOAT_VM_ACCEL").as_deref() == Ok("tcg") {
        assert_eq!(accel, "tcg");
    }
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
    // No copy of the image: the rootfs is shared over virtiofs.
    assert!(dir.is_dir() && !dir.join("rootfs.ext4").exists());
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
    wait_ready(&mut child, out.path());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    run_ends(&rt, &id, &b, child, out.path(), 42, "got-term");
}

/// `create` and `start` container `id` of bundle `b`; its QEMU's pid.
fn create_and_start(rt: &Rt, b: &Bundle, id: &str) -> i64 {
    vm_ok(rt, &["create", "--bundle", b.path().to_str().unwrap(), id]);
    vm_ok(rt, &["start", id]);
    rt.state(id)["pid"].as_i64().unwrap()
}

/// A foreground `run` (`child`, its output in `out`) ends with `code` having printed `want`, and
/// leaves nothing of container `id` behind.
fn run_ends(
    rt: &Rt,
    id: &str,
    b: &Bundle,
    mut child: std::process::Child,
    out: &std::path::Path,
    code: i32,
    want: &str,
) {
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(code));
    let printed = std::fs::read_to_string(out).unwrap();
    assert!(printed.contains(want), "{printed}");
    assert_clean(rt, id, Some(b.path()));
    assert_no_qemu(rt, id);
}

/// Wait (up to 60 s) until the output of `run` (`child`), written to `out`, says `ready`.
fn wait_ready(child: &mut std::process::Child, out: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(out).unwrap().contains("ready") {
        assert!(Instant::now() < deadline, "the container never started");
        assert!(child.try_wait().unwrap().is_none(), "run ended early");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// QEMU `qemu`'s `Pss_File` falls 8 MiB below `before` within 20 s. Not checked on a host with
/// swap: there the reclaim leaves the guest's RAM mapping alone (it holds guest-written pages
/// that would go to swap), and what remains is QEMU's binary, shared with other tests' QEMUs.
fn assert_reclaimed(qemu: i64, before: u64) {
    let swap = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("SwapTotal:"))
        .is_some_and(|v| v.trim() != "0 kB");
    if swap {
        eprintln!("the host has swap: the guest RAM is not reclaimed, PSS not checked");
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        let now = pss_file_kib(qemu);
        if now + 8 * 1024 < before || Instant::now() > deadline {
            break now;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    eprintln!("QEMU's file pages: {before} KiB at the start, {after} KiB once idle");
    assert!(
        after + 8 * 1024 < before,
        "QEMU's file-backed PSS went from {before} to {after} KiB only"
    );
}

/// `Pss_File` of process `pid` (KiB): the file pages it maps (a clone's guest RAM from its
/// template, QEMU's binary and libraries).
fn pss_file_kib(pid: i64) -> u64 {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss_File:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("Pss_File in smaps_rollup")
}

/// Give the bundle's VM a size (a container memory limit of `mib`) no other test uses: its
/// template is then its own, so no other test's clone maps its pages (the kernel reclaims only
/// pages one process maps).
fn alone_in_its_template(b: &mut Bundle, mib: u64) {
    b.spec["linux"]["resources"]["memory"]["limit"] = serde_json::json!(mib << 20);
    b.save();
}

/// A sandbox that idles gives its cold pages back: the process following it (here a foreground
/// `run`) has the kernel reclaim QEMU's file-backed pages once QEMU idles (moat_vm::reclaim),
/// and the container goes on unharmed.
#[test]
fn vm_idle_sandbox_gives_its_cold_pages_back() {
    let rt = Rt::new();
    let mut b = vm_bundle(&["sh", "-c", "echo ready; read line; echo \"got:$line\""]);
    alone_in_its_template(&mut b, 40);
    let id = id("vmreclaim");
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut child = vm_cmd(&rt, &["run", "--bundle", b.path().to_str().unwrap(), &id])
        .stdin(Stdio::piped())
        .stdout(out.reopen().unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    wait_ready(&mut child, out.path());
    let qemu = rt.state(&id)["pid"].as_i64().unwrap();
    let before = pss_file_kib(qemu);
    assert_reclaimed(qemu, before);
    // The guest still works: its input reaches it and its output comes back.
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"after\n").unwrap();
    run_ends(&rt, &id, &b, child, out.path(), 0, "got:after");
}

/// The same for a container that `create` and `start` leave alone (podman, Docker): a
/// `vm-reclaim` helper does it, and `delete` leaves no helper behind.
#[test]
fn vm_started_container_has_a_reclaim_helper() {
    let rt = Rt::new();
    let mut b = vm_bundle(&["sleep", "600"]);
    alone_in_its_template(&mut b, 44);
    let id = id("vmreclaimd");
    vm_ok(
        &rt,
        &["create", "--bundle", b.path().to_str().unwrap(), &id],
    );
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // `start` gets a descriptor above 2, as conmon's sync pipe or `--preserve-fds` are: the
    // write end of a FIFO. The helper, which lives as long as the VM, must not keep it.
    let fifo = b.path().join("inherited.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let start = vm_cmd(&rt, &["start", &id]);
    let o = Command::new("sh")
        .arg("-c")
        .arg(r#"exec "$0" "$@" 5>"$FIFO""#)
        .arg(start.get_program())
        .args(start.get_args())
        .envs(start.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .env("FIFO", &fifo)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let qemu = rt.state(&id)["pid"].as_i64().unwrap();
    // No writer left: the FIFO reads end-of-file (EAGAIN while a process holds the write end).
    let t = Instant::now();
    loop {
        match (&reader).read(&mut [0u8; 8]) {
            Ok(0) => break,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    t.elapsed() < Duration::from_secs(5),
                    "a process kept start's fd 5"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            r => panic!("{r:?}"),
        }
    }
    let before = pss_file_kib(qemu);
    let helpers = || {
        pids_with_cmdline("vm-reclaim")
            .into_iter()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| c.split('\0').any(|a| a == id))
            })
            .count()
    };
    assert_eq!(helpers(), 1, "one vm-reclaim helper for {id}");
    assert_reclaimed(qemu, before);
    vm_ok(&rt, &["delete", "-f", &id]);
    assert_eq!(helpers(), 0, "the helper outlived delete");
    assert_clean(&rt, &id, Some(b.path()));
    assert_no_qemu(&rt, &id);
}

/// No mount of the host mentions `needle` (the VM's binds live in the share server's namespaces
/// only).
fn assert_no_host_mount(needle: &str) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(needle),
        "a mount mentioning {needle} is on the host:\n{mounts}"
    );
}

/// Host directories for bind mounts: `rw/in.txt`, `ro/f`.
fn bind_sources() -> tempfile::TempDir {
    let h = tempfile::Builder::new()
        .prefix("moat-binds-")
        .tempdir()
        .unwrap();
    std::fs::create_dir(h.path().join("rw")).unwrap();
    std::fs::create_dir(h.path().join("ro")).unwrap();
    std::fs::write(h.path().join("rw/in.txt"), "host-data\n").unwrap();
    std::fs::write(h.path().join("ro/f"), "ro-original\n").unwrap();
    h
}

fn add_bind(b: &mut Bundle, dest: &str, source: &std::path::Path, opts: &[&str]) {
    let m = serde_json::json!({"destination": dest, "type": "bind",
        "source": source, "options": opts});
    b.spec["mounts"].as_array_mut().unwrap().push(m);
    b.save();
}

/// One boot checks stdin forwarding (EOF included, several chunks), a rw bind (read and write
/// through to the host), a ro bind that stays read-only on the host even after the guest
/// remounts it rw, and that a host file outside the binds is nowhere in the container.
#[test]
fn vm_run_forwards_stdin_and_shares_bind_mounts() {
    stdin_and_binds(true);
}

/// The same for a bundle that asks for a cold boot (`io.moat.vm.template: "false"`): the share
/// over virtiofs.
#[test]
fn vm_run_cold_shares_bind_mounts_over_virtiofs() {
    stdin_and_binds(false);
}

/// Without moat-vmfs a VM that shares a directory boots cold (virtiofs) after a one-line
/// notice, and the template is left alone.
#[test]
fn vm_without_the_share_server_boots_cold_with_a_notice() {
    let rt = Rt::new();
    let h = bind_sources();
    let mut b = vm_bundle(&["sh", "-c", "cat /rw/in.txt; grep ' /rw ' /proc/self/mounts"]);
    add_bind(&mut b, "/rw", &h.path().join("rw"), &["rbind", "rw"]);
    b.save();
    let id = id("vmnovmfs");
    let o = vm_cmd(&rt, &["run", "--bundle", b.path().to_str().unwrap(), &id])
        .env("MOAT_VMFS_BIN", "/nonexistent/moat-vmfs")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (out, err) = (text(&o), String::from_utf8_lossy(&o.stderr).into_owned());
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(
        out.contains("host-data") && out.contains(" virtiofs "),
        "{out}"
    );
    let notices: Vec<&str> = err.lines().filter(|l| l.contains("notice")).collect();
    assert_eq!(notices.len(), 1, "{err}");
    assert!(notices[0].contains("/nonexistent/moat-vmfs"), "{err}");
    // Said before any clone was tried (a failed clone would also remove the template).
    assert!(
        notices[0].contains("a clone cannot share its directory"),
        "{err}"
    );
    assert_clean(&rt, &id, Some(b.path()));
    assert_no_qemu(&rt, &id);

    // A server that is there but fails (exits before it serves): the clone is given up with
    // one notice naming the share, the VM boots cold, and the template, which resumed fine,
    // stays (it was removed as if broken before).
    let run = |id: &str, vmfs: Option<&str>| {
        let mut c = vm_cmd(&rt, &["run", "--bundle", b.path().to_str().unwrap(), id]);
        if let Some(v) = vmfs {
            c.env("MOAT_VMFS_BIN", v);
        }
        let o = c.stdin(Stdio::null()).output().unwrap();
        let (out, err) = (text(&o), String::from_utf8_lossy(&o.stderr).into_owned());
        assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
        assert!(out.contains("host-data"), "{out}");
        assert_clean(&rt, id, Some(b.path()));
        assert_no_qemu(&rt, id);
        (out, err)
    };
    let templates = || -> std::collections::BTreeSet<std::path::PathBuf> {
        std::fs::read_dir(moat_vm::template::store_dir())
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.join("state").exists())
                    .collect()
            })
            .unwrap_or_default()
    };
    let (out, _) = run(&common::id("vmvmfsok"), None);
    assert!(out.contains(" fuse.moatfs "), "not a clone: {out}");
    let before = templates();
    assert!(!before.is_empty());
    let (out, err) = run(&common::id("vmvmfsfails"), Some("/bin/false"));
    assert!(out.contains(" virtiofs "), "{out}");
    let notices: Vec<&str> = err.lines().filter(|l| l.contains("notice")).collect();
    assert_eq!(notices.len(), 1, "{err}");
    assert!(
        notices[0].contains("serve the clone's shared directory"),
        "{err}"
    );
    let after = templates();
    assert!(
        before.is_subset(&after),
        "a template went: {before:?} -> {after:?}"
    );
}

/// A clone (`templates`: the share is FUSE over a serial port, served by moat-vmfs) or a cold
/// boot (virtiofs) runs a container with stdin, a rw and a ro bind, a file bind, and nothing
/// of the host beyond them.
fn stdin_and_binds(templates: bool) {
    let rt = Rt::new();
    let h = bind_sources();
    let marker = format!("moat-marker-{}", std::process::id());
    let marker_path = std::env::temp_dir().join(&marker);
    std::fs::write(&marker_path, "secret").unwrap();
    let script = format!(
        "read first; echo \"first:$first\"; echo \"rest:$(wc -c)\"; \
         cat /rw/in.txt; echo from-guest > /rw/out.txt; \
         if echo x > /ro/f; then echo ro-write-ok; fi; \
         mount -o remount,bind,rw /ro && echo remounted; \
         if echo y > /ro/f; then echo ro-write-after-remount-ok; fi; \
         cat /ro/f; cat /etc/host-file; grep ' /rw ' /proc/self/mounts; \
         find / -path /proc -prune -o -path /sys -prune -o -name {marker} -print; echo end"
    );
    let mut b = vm_bundle(&["sh", "-c", &script]);
    if !templates {
        b.spec["annotations"]["io.moat.vm.template"] = "false".into();
    }
    add_bind(&mut b, "/rw", &h.path().join("rw"), &["rbind", "rw"]);
    add_bind(&mut b, "/ro", &h.path().join("ro"), &["bind", "ro"]);
    std::fs::write(h.path().join("single"), "a-single-file\n").unwrap();
    add_bind(
        &mut b,
        "/etc/host-file",
        &h.path().join("single"),
        &["bind", "ro"],
    );
    // A guest root that may remount: CAP_SYS_ADMIN and no seccomp filter.
    for set in ["bounding", "effective", "permitted"] {
        b.spec["process"]["capabilities"][set]
            .as_array_mut()
            .unwrap()
            .push("CAP_SYS_ADMIN".into());
    }
    b.spec["linux"].as_object_mut().unwrap().remove("seccomp");
    b.save();
    // A long id: the state dir is too long for socket paths, so the run dir (agent and virtiofsd
    // sockets) moves under /run/moat-vm, and must go from there too.
    let id = id("vmio-with-an-id-long-enough-to-move-the-sockets");
    // 100 KiB after the first line: several stdin chunks, then EOF.
    let mut input = b"hello\n".to_vec();
    input.extend(std::iter::repeat_n(b'z', 100 * 1024));
    let t = Instant::now();
    let mut child = vm_cmd(&rt, &["run", "--bundle", b.path().to_str().unwrap(), &id])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let run_dir = std::path::PathBuf::from(format!("/run/moat-vm/moat-vm-{}-0", child.id()));
    let mut sin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        sin.write_all(&input).unwrap();
    });
    let o = child.wait_with_output().unwrap();
    writer.join().unwrap();
    eprintln!("run with binds and stdin: {:?}", t.elapsed());
    let _ = std::fs::remove_file(&marker_path);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    let fs = if templates {
        " fuse.moatfs "
    } else {
        " virtiofs "
    };
    assert!(stdout.contains(&format!(" /rw{fs}")), "{stdout}");
    assert!(stdout.contains("first:hello"), "{stdout}");
    assert!(stdout.contains(&format!("rest:{}", 100 * 1024)), "{stdout}");
    assert!(stdout.contains("host-data"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(h.path().join("rw/out.txt")).unwrap(),
        "from-guest\n"
    );
    assert!(!stdout.contains("ro-write-ok"), "{stdout}");
    assert!(
        stdout.contains("remounted"),
        "the guest could not remount: {stderr}"
    );
    assert!(!stdout.contains("ro-write-after-remount-ok"), "{stdout}");
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(h.path().join("ro/f")).unwrap(),
        "ro-original\n"
    );
    assert!(stdout.contains("ro-original"), "{stdout}");
    assert!(stdout.contains("a-single-file"), "a file bind: {stdout}");
    assert!(
        !stdout.contains(&marker),
        "host file visible in the guest: {stdout}"
    );
    assert!(stdout.contains("end"), "{stdout}");
    assert_clean(&rt, &id, Some(b.path()));
    assert_no_qemu(&rt, &id);
    assert_no_host_mount(&h.path().to_string_lossy());
    assert_no_host_mount(&rt.root.path().join(&id).to_string_lossy());
    assert!(
        !run_dir.exists(),
        "run dir {} left behind",
        run_dir.display()
    );
    assert!(pids_with_cmdline(&run_dir.to_string_lossy()).is_empty());
    assert_no_host_mount(&run_dir.to_string_lossy());
}

#[test]
fn vm_bind_mount_with_missing_source_leaves_nothing() {
    let rt = Rt::new();
    let mut b = vm_bundle(&["true"]);
    add_bind(
        &mut b,
        "/data",
        std::path::Path::new("/nonexistent-moat-bind-source"),
        &["rbind"],
    );
    let id = id("vmbad");
    let o = vm_cmd(
        &rt,
        &["create", "--bundle", b.path().to_str().unwrap(), &id],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error:"), "{stderr}");
    assert!(stderr.contains("/nonexistent-moat-bind-source"), "{stderr}");
    assert_clean(&rt, &id, Some(b.path()));
    assert_no_qemu(&rt, &id);
    assert!(pids_with_cmdline(&id).is_empty());
}

/// `o` succeeded; its stdout as text.
fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// exec (args and --process, exit codes, stdin), ps, events --stats, OOM events, pause/resume,
/// list, and the refusal of update, all on one VM (which also shares a bind mount while it runs).
#[test]
fn vm_exec_ps_events_pause_and_list() {
    let rt = Rt::new();
    let h = bind_sources();
    let mut b = vm_bundle(&["sleep", "600"]);
    // 32 MiB for the container (the guest gets 32 + moat_vm::MEMORY_OVERHEAD_MIB): room for
    // what follows, and an exec that grows past it is OOM-killed by the container's memory
    // cgroup, not by the guest running out first.
    b.spec["linux"]["resources"]["memory"]["limit"] = serde_json::json!(32u64 << 20);
    add_bind(&mut b, "/data", &h.path().join("rw"), &["rbind", "rw"]);
    let id = id("vmexec");
    let qemu = create_and_start(&rt, &b, &id);
    // The guest has the limit free and more (page cache): with less, the guest's OOM killer
    // would act before the container's cgroup (a limit silently lower than asked). Failed with
    // 96 MiB of overhead: 25 MiB available.
    let meminfo = text(&vm_ok(&rt, &["exec", &id, "cat", "/proc/meminfo"]));
    let available = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("MemAvailable in /proc/meminfo");
    eprintln!(
        "guest memory available beside a 32 MiB limit: {} MiB",
        available >> 10
    );
    assert!(available >> 10 >= 32 + 8, "{meminfo}");
    assert_no_host_mount(&h.path().to_string_lossy());
    assert_no_host_mount(&rt.root.path().join(&id).to_string_lossy());
    let dir = rt.root.path().join(&id);
    // A clone of a template: its share is served by moat-vmfs (FUSE over a serial port).
    assert_eq!(
        rt.state(&id)["annotations"]["io.moat.vm.start"],
        "clone",
        "a bundle with a directory rootfs and a bind is a clone"
    );
    let servers = pids_with_cmdline(&dir.to_string_lossy())
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.contains("moat-vmfs"))
        })
        .count();
    assert!(servers >= 1, "no moat-vmfs while the VM runs");
    // Its serving process (the one in a new pid namespace) is confined like virtiofsd: its root
    // is the share (one directory per container), file capabilities only, no_new_privs.
    let serving: Vec<i32> = pids_with_cmdline(&dir.to_string_lossy())
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.contains("moat-vmfs"))
                && std::fs::read_link(format!("/proc/{p}/ns/pid")).ok()
                    != std::fs::read_link("/proc/self/ns/pid").ok()
        })
        .collect();
    assert_eq!(serving.len(), 1, "one serving moat-vmfs: {serving:?}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", serving[0])).unwrap();
    assert!(status.contains("CapEff:\t00000000800000db"), "{status}");
    assert!(status.contains("CapBnd:\t00000000800000db"), "{status}");
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    // ... and a seccomp allow-list (fuse_share::SYSCALLS) is in force.
    assert!(status.contains("Seccomp:\t2"), "{status}");
    let root: Vec<String> = std::fs::read_dir(format!("/proc/{}/root", serving[0]))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(root, vec![id.clone()], "the server's root is the share");
    // Every mount it serves is nodev, nosuid and noexec: a device node the guest makes in a
    // share could not open a host device even through a server bug.
    let info = std::fs::read_to_string(format!("/proc/{}/mountinfo", serving[0])).unwrap();
    let mut binds = 0;
    for l in info.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        let opts: Vec<&str> = f[5].split(',').collect();
        for o in ["nodev", "nosuid", "noexec"] {
            assert!(opts.contains(&o), "{o} missing on {}: {info}", f[4]);
        }
        binds += usize::from(f[4] != "/");
    }
    assert!(binds >= 1, "no bind in the server's mounts: {info}");

    let list: serde_json::Value =
        serde_json::from_str(&text(&vm_ok(&rt, &["list", "--format", "json"]))).unwrap();
    let me = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id.as_str())
        .expect("listed");
    assert_eq!(me["status"], "running");
    assert_eq!(me["pid"], qemu);

    let t = Instant::now();
    let o = vm_cmd(
        &rt,
        &[
            "exec",
            &id,
            "--",
            "sh",
            "-c",
            "cat /data/in.txt; echo err >&2; exit 3",
        ],
    )
    .output()
    .unwrap();
    eprintln!("exec: {:?}", t.elapsed());
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(text(&o), "host-data\n");
    assert!(String::from_utf8_lossy(&o.stderr).contains("err"));

    let mut child = vm_cmd(&rt, &["exec", &id, "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut sin = child.stdin.take().unwrap();
        sin.write_all(b"piped\n").unwrap();
    }
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    assert_eq!(text(&o), "piped\n");

    // An idle guest sleeps: its timer interrupts over 3 s of nothing (the guest ticked at 250 Hz
    // without ARAT, and the agent woke every 20 ms).
    let o = vm_sh(
        &rt,
        &id,
        "a=$(grep '^intr' /proc/stat | cut -d' ' -f2); sleep 3; \
             b=$(grep '^intr' /proc/stat | cut -d' ' -f2); echo $((b - a))",
    )
    .output()
    .unwrap();
    let per_s = text(&o).trim().parse::<u64>().unwrap_or(u64::MAX) / 3;
    eprintln!("guest interrupts per second while idle: {per_s}");
    assert!(per_s < 100, "the idle guest is busy: {per_s}/s {o:?}");

    // A foreground exec holds one agent port while it waits for its stdin; ps and another exec
    // meanwhile use other ports, and each process's output reaches only its own command.
    let mut long = vm_cmd(&rt, &["exec", &id, "sh", "-c", "read x; echo got-$x"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // ps works while that exec is attached: poll until its process shows.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !text(&vm_ok(&rt, &["ps", &id])).contains("read x") {
        assert!(
            Instant::now() < deadline,
            "the attached exec never showed in ps"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let t = Instant::now();
    let o = vm_cmd(&rt, &["exec", &id, "echo", "beside"])
        .output()
        .unwrap();
    assert_eq!(text(&o), "beside\n");
    eprintln!("ps and exec beside an attached exec: {:?}", t.elapsed());
    {
        use std::io::Write;
        let mut sin = long.stdin.take().unwrap();
        sin.write_all(b"late\n").unwrap();
    }
    let o = long.wait_with_output().unwrap();
    assert!(o.status.success());
    assert_eq!(text(&o), "got-late\n");

    let pj = b.path().join("process.json");
    std::fs::write(
        &pj,
        serde_json::to_vec(&serde_json::json!({
            "args": ["sh", "-c", "echo from-process-file; exit 5"],
            "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}
        }))
        .unwrap(),
    )
    .unwrap();
    let o = vm_cmd(&rt, &["exec", "--process", pj.to_str().unwrap(), &id])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(text(&o), "from-process-file\n");

    let pids: Vec<i32> =
        serde_json::from_str(&text(&vm_ok(&rt, &["ps", "--format", "json", &id]))).unwrap();
    assert!(!pids.is_empty());
    let table = text(&vm_ok(&rt, &["ps", &id]));
    assert!(table.contains("sleep 600"), "{table}");

    let ev: serde_json::Value =
        serde_json::from_str(&text(&vm_ok(&rt, &["events", "--stats", &id]))).unwrap();
    assert_eq!(ev["type"], "stats");
    assert!(
        ev["data"]["memory"]["usage"]["usage"].as_u64().unwrap() > 0,
        "{ev}"
    );
    assert!(ev["data"]["pids"]["current"].as_u64().unwrap() >= 1, "{ev}");

    // events without --stats: one stats line per interval while the container runs.
    let mut ev = vm_cmd(&rt, &["events", "--interval", "1s", &id])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(ev.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["type"], "stats", "{line}");
    }
    let _ = ev.kill();
    let _ = ev.wait();

    // OOM: an exec that grows a shell string past the limit is killed (137), the container's
    // init lives on, and `events` reports the kill as the namespaces backend does.
    let mut ev = vm_cmd(&rt, &["events", "--interval", "60s", &id])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    let out = ev.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(out).lines() {
            let Ok(l) = l else { return };
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    // The first stats line: events is attached.
    let first = lines.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(first.contains(r#""type":"stats""#), "{first}");
    let t = Instant::now();
    let o = vm_sh(&rt, &id, "x=0123456789; while :; do x=$x$x; done")
        .output()
        .unwrap();
    eprintln!("exec OOM-killed: {:?}", t.elapsed());
    assert_eq!(
        o.status.code(),
        Some(137),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let line = lines.recv_timeout(Duration::from_secs(30)).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v, serde_json::json!({"type": "oom", "id": id}), "{line}");
    // A process the agent does not reap (a subshell of an exec that lives on) killed by the
    // OOM killer: reported while the exec still runs (cgroup v2 inotify on memory.events in the
    // guest; no periodic read any more).
    let t = Instant::now();
    let mut bg = vm_sh(
        &rt,
        &id,
        "(x=0123456789; while :; do x=$x$x; done) & sleep 20",
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let line = lines
        .recv_timeout(Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("no OOM event after {:?}: {e}", t.elapsed()));
    eprintln!("OOM of a subshell reported after {:?}", t.elapsed());
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v, serde_json::json!({"type": "oom", "id": id}), "{line}");
    assert!(bg.try_wait().unwrap().is_none(), "the exec ended first");
    // Its `sleep` lives on in the guest until the container is deleted.
    let _ = bg.kill();
    let _ = bg.wait();
    let _ = ev.kill();
    let _ = ev.wait();
    assert_eq!(rt.status(&id), "running");

    vm_ok(&rt, &["pause", &id]);
    assert_eq!(rt.status(&id), "paused");
    let o = vm_cmd(&rt, &["exec", &id, "true"]).output().unwrap();
    assert!(!o.status.success(), "exec in a paused container");
    vm_ok(&rt, &["resume", &id]);
    assert_eq!(rt.status(&id), "running");
    let o = vm_cmd(&rt, &["exec", &id, "true"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    for args in [
        &["update", "--memory", "10m", &id][..],
        &["ps", &id, "-ef"][..],
    ] {
        let o = vm_cmd(&rt, args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?}");
        assert!(
            err.starts_with("error:") && err.lines().count() == 1,
            "{err}"
        );
        assert!(err.contains("not supported"), "{err}");
    }

    // The share's server killed: the guest's relay aborts the FUSE connection, so the share
    // fails loudly (ENOTCONN) instead of hanging; the VM is still removed completely.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(serving[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let t = Instant::now();
    let o = vm_cmd(&rt, &["exec", &id, "cat", "/data/in.txt"])
        .output()
        .unwrap();
    let said = format!("{}{}", text(&o), String::from_utf8_lossy(&o.stderr));
    eprintln!(
        "exec with the share's server gone: {:?}: {said}",
        t.elapsed()
    );
    assert!(!o.status.success(), "{said}");
    assert!(said.contains("not connected"), "{said}");
    assert!(t.elapsed() < Duration::from_secs(20));

    vm_ok(&rt, &["kill", &id, "KILL"]);
    rt.wait_status(&id, "stopped");
    vm_ok(&rt, &["delete", &id]);
    assert_clean(&rt, &id, Some(b.path()));
    assert_no_qemu(&rt, &id);
    assert_no_host_mount(&h.path().to_string_lossy());
}

/// A bundle naming an ext4 image of its rootfs (`io.moat.vm.rootfs-image`, what `moat run` gives
/// an image's containers) runs in a clone of a template: the output and exit code pass through,
/// the container writes to its own layer (the image is not written), `state` says `clone`.
#[test]
fn vm_bundle_with_a_rootfs_image_runs_in_a_clone() {
    let rt = Rt::new();
    let mut b = vm_bundle(&["sh", "-c", "echo w > /tmp/x && cat /tmp/x; sleep 30"]);
    let img_dir = tempfile::tempdir().unwrap();
    let img = img_dir.path().join("rootfs.ext4");
    moat_vm::assets::build_ext4_image(&b.rootfs(), &img).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(moat_vm::template::DISK_BYTES)
        .unwrap();
    let before = std::fs::read(&img).unwrap().len();
    b.spec["annotations"]["io.moat.vm.rootfs-image"] = img.display().to_string().into();
    b.spec["root"]["readonly"] = false.into();
    b.save();
    let id = id("vmclone");
    let bp = b.path().to_str().unwrap().to_owned();
    vm_ok(&rt, &["create", "--bundle", &bp, &id]);
    let state: serde_json::Value =
        serde_json::from_slice(&vm_ok(&rt, &["state", &id]).stdout).unwrap();
    assert_eq!(state["annotations"]["io.moat.vm.start"], "clone", "{state}");
    vm_ok(&rt, &["start", &id]);
    // The init writes the file as it starts: an exec may come first (or see it empty).
    let deadline = Instant::now() + Duration::from_secs(20);
    let o = loop {
        let o = vm_cmd(&rt, &["exec", &id, "cat", "/tmp/x"])
            .output()
            .unwrap();
        if o.stdout == b"w\n" || Instant::now() > deadline {
            break o;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(String::from_utf8_lossy(&o.stdout), "w\n", "{o:?}");
    assert!(
        !b.rootfs().join("tmp/x").exists(),
        "the guest's write reached the bundle"
    );
    vm_ok(&rt, &["delete", "--force", &id]);
    assert_eq!(std::fs::read(&img).unwrap().len(), before);
    assert_clean(&rt, &id, Some(b.path()));
    assert_no_qemu(&rt, &id);
}
