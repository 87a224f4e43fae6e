//! A VM pod through Kubernetes' CRI: a private containerd with a `moat-vm` handler
//! (`runtime_type = "io.containerd.moat-vm.v2"`, the shim under its second name) runs a
//! host-network pod with two containers. Both run in one VM (exactly one QEMU for the pod, the
//! same guest kernel in both, not the host's), ExecSync works (output, stderr, exit code), a
//! container's process list has no host process, and stopping and removing the pod leaves no
//! QEMU, virtiofsd, shim, mount or run directory. Then a pod of the plain `moat` handler with the
//! pod annotation `io.moat.isolation=vm` runs in a VM too; and a VM pod whose shim is killed
//! leaves no VM and, after containerd's clean-up, no run directory. Last, `ctr run` with the VM
//! runtime: a container alone in a VM, stdin forwarded, an OOM kill in the guest seen by
//! containerd (`TaskOOM`), its exit code back.
//!
//! Skipped, with the reason printed, when qemu-system-x86_64 or the guest kernel cannot be had.

#[path = "../../moat-runtime/tests/support/mod.rs"]
mod support;
use support::*;

#[path = "../../moat-runtime/tests/support/vm_agent.rs"]
mod vm_agent;

#[path = "cri/common.rs"]
mod common;
use common::cri_api::*;
use common::*;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Appended to the `moat` handler (`pod_annotations`: `io.moat.isolation=vm` reaches the
/// sandbox, the other way to ask for a VM), and the `moat-vm` handler.
const VM_RUNTIME: &str = r#"      pod_annotations = ["io.moat.*"]
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.moat-vm]
      runtime_type = "io.containerd.moat-vm.v2"
      pod_annotations = ["io.moat.*"]"#;

/// Processes whose command line contains `needle` (this test's own excluded).
fn procs_with(needle: &str) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    pids_with_cmdline(needle)
        .into_iter()
        .filter(|p| *p != me)
        .map(|p| {
            let c = std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| text(&c).replace('\0', " "))
                .unwrap_or_default();
            (p, c)
        })
        .collect()
}

/// Stop and remove `pod`; then wait until no shim of `cd` and no QEMU or virtiofsd whose
/// command line has `vm_needle` is left.
fn remove_pod(cri: &Cri, cd: &CriContainerd, pod: &str, vm_needle: &str) {
    let t = Instant::now();
    stop_and_remove_pod(cri, pod);
    eprintln!("pod stopped and removed in {:?}", t.elapsed());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let shims_left = cd.shim_processes();
        let vm_left = procs_with(vm_needle);
        if shims_left.is_empty() && vm_left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "10 s after RemovePodSandbox: shims {shims_left:#?}, VM processes {vm_left:#?}\n{}",
            cd.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The serving shim of the only pod (its zygote is a child of it).
fn serving_shim(cd: &CriContainerd) -> i32 {
    let shim_procs = cd.shim_processes();
    let serving: Vec<i32> = shim_procs
        .iter()
        .filter(|(_, (ppid, _))| !shim_procs.contains_key(ppid))
        .map(|(pid, _)| *pid)
        .collect();
    assert_eq!(serving.len(), 1, "{shim_procs:#?}");
    serving[0]
}

#[test]
fn cri_vm_pod_runs_two_containers_in_one_vm() {
    let test = "cri_vm_pod_runs_two_containers_in_one_vm";
    if !have_all(test, &["containerd", "ctr", "qemu-system-x86_64"]) {
        return;
    }
    let t0 = Instant::now();
    let Some(shims) = vm_shims(test, vm_agent::agent(), "moat-cri-vm-shims-") else {
        return;
    };
    let cd = CriContainerd::start_with(shims.path(), VM_RUNTIME);
    let work = tempfile::Builder::new()
        .prefix("moat-cri-vm-images-")
        .tempdir()
        .unwrap();
    let (busybox, pause) = images(work.path());
    cd.import(&busybox);
    cd.import(&pause);
    let logs = cd.path().join("pod-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let cri = Cri::connect(&cd.sock(), cd.log_path());
    eprintln!("{test}: set up in {:?}", t0.elapsed());

    let sandbox_config = pod_config(
        "moat-vm-pod",
        &format!("moat-cri-vm-{}", std::process::id()),
        &logs,
        &cd.cgroup_parent,
        host_network(),
    );
    let started = Instant::now();
    let pod = start_pod(&cri, &sandbox_config, "moat-vm");
    eprintln!(
        "POD START (RunPodSandbox, VM boot included): {:?}",
        started.elapsed()
    );

    let mut ctrs = Vec::new();
    for name in ["c1", "c2"] {
        let t = Instant::now();
        let cid = create_and_start(&cri, &pod, &sandbox_config, name);
        eprintln!("container {name}: created and started in {:?}", t.elapsed());
        ctrs.push((name, cid));
    }

    // Their output reaches the CRI log files.
    for (name, _) in &ctrs {
        let file = logs.join(format!("{name}.log"));
        let want = format!("stdout F started-{name}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !std::fs::read_to_string(&file)
            .unwrap_or_default()
            .contains(&want)
        {
            assert!(
                Instant::now() < deadline,
                "{} lacks {want:?}",
                file.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    // One shim, one QEMU for the pod.
    let shim_procs = cd.shim_processes();
    let shim = serving_shim(&cd);
    let vm_needle = format!("/run/moat-shim-vm/moat-vm-{shim}-");
    let qemus: Vec<_> = procs_with(&vm_needle)
        .into_iter()
        .filter(|(_, c)| c.contains("qemu-system"))
        .collect();
    assert_eq!(qemus.len(), 1, "one QEMU for the pod: {qemus:#?}");
    // A clone of a template (resumed from its state: `-incoming`), its share served by
    // moat-vmfs (FUSE over a serial port).
    assert!(qemus[0].1.contains("-incoming"), "not a clone: {qemus:#?}");
    assert!(
        procs_with(&vm_needle)
            .iter()
            .any(|(_, c)| c.contains("moat-vmfs")),
        "no moat-vmfs for the pod"
    );

    // The guest kernel, the same in both containers, not the host's.
    let host = nix::sys::utsname::uname().unwrap();
    let host_release = host.release().to_string_lossy().into_owned();
    let mut releases = Vec::new();
    for (_, cid) in &ctrs {
        let r = exec(&cri, cid, &["uname", "-r"]);
        assert_eq!(r.exit_code, 0, "{r:?}");
        releases.push(text(&r.stdout).trim().to_string());
    }
    eprintln!("guest kernel {releases:?}, host kernel {host_release}");
    assert!(!releases[0].is_empty());
    assert_eq!(releases[0], releases[1], "both containers in the same VM");
    assert_ne!(
        releases[0], host_release,
        "the container runs on the host's kernel"
    );

    // The process list: the container's own, nothing of the host.
    let r = exec(&cri, &ctrs[0].1, &["ps", "-o", "pid,comm"]);
    let ps = text(&r.stdout);
    eprintln!("ps in c1:\n{ps}");
    assert_eq!(r.exit_code, 0, "{r:?}");
    for host_proc in ["containerd", "qemu", "virtiofsd", "moat-vmfs", "cri_vm"] {
        assert!(
            !ps.contains(host_proc),
            "{host_proc} visible in the pod: {ps}"
        );
    }
    // Kubelet's default (a pid namespace per container): c1's `sleep` is its PID 1, alone.
    assert!(
        ps.lines().any(|l| l.split_whitespace().eq(["1", "sleep"])),
        "{ps}"
    );
    // `shareProcessNamespace: true` (CRI's POD pid mode): the pod's containers share one pid
    // namespace whose init is the agent's stand-in for the pause process, so each sees the
    // other's process and neither is PID 1 (a PID 1 without a SIGTERM handler would ignore
    // StopContainer's SIGTERM, where runc's container, not PID 1, ends).
    let shared_pid = NamespaceOption {
        pid: NamespaceMode::Pod as i32,
        ..host_network()
    };
    let mut shared = Vec::new();
    for name in ["p1", "p2"] {
        let script = format!("echo started-{name}; exec sleep 1000");
        shared.push(start_container_with(
            &cri,
            &pod,
            &sandbox_config,
            name,
            &script,
            shared_pid.clone(),
        ));
    }
    let r = exec(&cri, &shared[0], &["ps", "-o", "pid,comm"]);
    let ps = text(&r.stdout);
    let sleeps = ps
        .lines()
        .filter(|l| l.trim_end().ends_with("sleep"))
        .count();
    assert_eq!(sleeps, 2, "p1 sees p2's process too: {ps}");
    assert!(
        !ps.lines().any(|l| l.split_whitespace().eq(["1", "sleep"])),
        "a container's init is PID 1 of the pod's namespace: {ps}"
    );
    // An orphan of the pod ends as a child of that init, which lets the kernel reap it.
    let r = exec(
        &cri,
        &shared[0],
        &["sh", "-c", "(sleep 0.2 &); sleep 1; cat /proc/[0-9]*/stat"],
    );
    let stats = text(&r.stdout);
    assert!(
        !stats.lines().any(|l| l
            .rsplit_once(") ")
            .is_some_and(|(_, st)| st.starts_with('Z'))),
        "a zombie in the pod: {stats}"
    );
    assert!(ps.contains("sleep"), "{ps}");
    assert!(ps.lines().count() < 10, "{ps}");

    // stderr and exit codes.
    let r = exec(
        &cri,
        &ctrs[1].1,
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
    );
    assert_eq!(r.exit_code, 3, "{r:?}");
    assert_eq!(
        (text(&r.stdout), text(&r.stderr)),
        ("out\n".into(), "err\n".into())
    );

    // Stats come from the guest.
    let s = cri_ok!(
        cri,
        container_stats,
        ContainerStatsRequest {
            container_id: ctrs[0].1.clone()
        }
    )
    .stats
    .expect("container stats");
    assert!(s.cpu.is_some() && s.memory.is_some(), "{s:?}");

    // Pids (guest pids), Pause and Resume, through ctr on the CRI's namespace.
    let c1 = &ctrs[0].1;
    let ps = ok(
        cd.ctr().args(["task", "ps", c1]),
        Duration::from_secs(30),
        "ctr task ps",
    );
    assert_eq!(ps.lines().count(), 2, "the init only: {ps}");
    let task_status = || {
        let ls = ok(
            cd.ctr().args(["task", "ls"]),
            Duration::from_secs(30),
            "ctr task ls",
        );
        ls.lines()
            .find(|l| l.starts_with(c1.as_str()))
            .and_then(|l| l.split_whitespace().nth(2))
            .unwrap_or_default()
            .to_string()
    };
    ok(
        cd.ctr().args(["task", "pause", c1]),
        Duration::from_secs(30),
        "pause",
    );
    assert_eq!(task_status(), "PAUSED");
    ok(
        cd.ctr().args(["task", "resume", c1]),
        Duration::from_secs(30),
        "resume",
    );
    assert_eq!(task_status(), "RUNNING");
    let r = exec(&cri, c1, &["true"]);
    assert_eq!(r.exit_code, 0, "exec after resume: {r:?}");

    // An idle pod costs its shim no timer wakeups: the agent link's reader blocks on the socket
    // (it woke every 20 ms), and no ttrpc client is kept to containerd (each polled every 10
    // ms): ~400 context switches in 2 s before.
    let switches = || -> std::collections::BTreeMap<String, u64> {
        shim_procs
            .keys()
            .flat_map(|p| {
                std::fs::read_dir(format!("/proc/{p}/task"))
                    .into_iter()
                    .flatten()
            })
            .flatten()
            .filter_map(|t| {
                let st = std::fs::read_to_string(t.path().join("status")).ok()?;
                let n = st
                    .lines()
                    .filter(|l| l.contains("ctxt_switches"))
                    .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .sum();
                Some((t.path().display().to_string(), n))
            })
            .collect()
    };
    let before = switches();
    std::thread::sleep(Duration::from_secs(2));
    let busy: Vec<(String, u64)> = switches()
        .into_iter()
        .map(|(t, n)| {
            let d = n.saturating_sub(before.get(&t).copied().unwrap_or(n));
            (t, d)
        })
        .filter(|(_, d)| *d > 0)
        .collect();
    let idle: u64 = busy.iter().map(|(_, d)| d).sum();
    eprintln!("shim context switches in 2 s idle: {idle} {busy:?}");
    assert!(
        idle < 20,
        "the shim wakes up while its pod is idle: {busy:?} in 2 s"
    );

    // The shim and QEMU (and the share server) memory of the pod.
    let mem: Vec<(i32, String, (u64, u64))> = shim_procs
        .keys()
        .map(|p| (*p, "shim".to_string()))
        .chain(procs_with(&vm_needle).into_iter().map(|(p, c)| {
            let what = if c.contains("qemu-system") {
                "qemu"
            } else {
                "share server"
            };
            (p, what.to_string())
        }))
        .map(|(p, w)| (p, w, rss_pss_kib(p)))
        .collect();
    for (p, w, (rss, pss)) in &mem {
        eprintln!("VM POD MEMORY {w} pid {p}: Rss {rss} KiB, Pss {pss} KiB");
    }

    // Stop and remove the pod with its containers running.
    remove_pod(&cri, &cd, &pod, &vm_needle);
    let left = cri_ok!(cri, list_containers, ListContainersRequest { filter: None }).containers;
    assert!(left.is_empty(), "containers left: {left:?}");
    let mounts = mounts_below(cd.path());
    assert!(mounts.is_empty(), "mounts left: {mounts:#?}");
    let run_dirs: Vec<PathBuf> = std::fs::read_dir("/run/moat-shim-vm")
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    let prefix = format!("moat-vm-{shim}-");
    assert!(
        !run_dirs.iter().any(|d| d
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))),
        "run dir left: {run_dirs:?}"
    );
    let state = Path::new("/run/moat-shim").join(K8S_NS);
    for (_, cid) in &ctrs {
        assert!(!state.join(cid).exists());
        // The containers' cgroups are in the guest: none on the host.
        assert_no_cgroup(&format!("{}/{cid}", cd.cgroup_parent));
    }

    // The other way to ask for a VM: the plain `moat` handler and the pod annotation; this one
    // also asks for a cold boot (`io.moat.vm.template: "false"`), its share over virtiofs.
    let mut annotated = sandbox_config.clone();
    if let Some(m) = annotated.metadata.as_mut() {
        m.name = "moat-vm-pod-annotated".into();
        m.uid.push_str("-annotated");
    }
    annotated
        .annotations
        .insert("io.moat.isolation".into(), "vm".into());
    annotated
        .annotations
        .insert("io.moat.vm.template".into(), "false".into());
    let pod2 = start_pod(&cri, &annotated, "moat");
    let c3 = create_and_start(&cri, &pod2, &annotated, "c3");
    let shim2 = serving_shim(&cd);
    let needle2 = format!("/run/moat-shim-vm/moat-vm-{shim2}-");
    let procs2 = procs_with(&needle2);
    let qemus: Vec<_> = procs2
        .iter()
        .filter(|(_, c)| c.contains("qemu-system"))
        .collect();
    assert_eq!(qemus.len(), 1, "the annotated pod has its VM");
    assert!(!qemus[0].1.contains("-incoming"), "a clone: {qemus:#?}");
    assert!(
        procs2.iter().any(|(_, c)| c.contains("virtiofsd")),
        "no virtiofsd: {procs2:#?}"
    );
    let r = exec(&cri, &c3, &["uname", "-r"]);
    assert_eq!(text(&r.stdout).trim(), releases[0], "{r:?}");
    remove_pod(&cri, &cd, &pod2, &needle2);
    let mounts = mounts_below(cd.path());
    assert!(mounts.is_empty(), "mounts left: {mounts:#?}");

    // A shim that is killed: the agent powers the VM off when the connection closes, and
    // containerd's clean-up (`delete`) removes the run directory.
    let mut crash = sandbox_config.clone();
    if let Some(m) = crash.metadata.as_mut() {
        m.name = "moat-vm-pod-crash".into();
        m.uid.push_str("-crash");
    }
    let pod3 = start_pod(&cri, &crash, "moat-vm");
    create_and_start(&cri, &pod3, &crash, "c4");
    let shim3 = serving_shim(&cd);
    let needle3 = format!("/run/moat-shim-vm/moat-vm-{shim3}-");
    assert_eq!(
        procs_with(&needle3).len(),
        3,
        "qemu and its share server (2 processes)"
    );
    for pid in cd.shim_processes().into_keys() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while !procs_with(&needle3).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the VM outlived its killed shim by 15 s: {:#?}",
            procs_with(&needle3)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    remove_pod(&cri, &cd, &pod3, &needle3);
    let mounts = mounts_below(cd.path());
    assert!(mounts.is_empty(), "mounts left: {mounts:#?}");
    let prefix3 = format!("moat-vm-{shim3}-");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir("/run/moat-shim-vm")
        .map(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(&prefix3))
        })
        .unwrap_or(false)
    {
        assert!(Instant::now() < deadline, "run dir of the killed shim left");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Outside the CRI: `ctr run` with the VM runtime, a container of its own in its own VM,
    // stdin forwarded from the fifo, the exit code back. With a 32 MiB limit, a subshell that
    // grows past it is OOM-killed in the guest and containerd hears of it (`/tasks/oom`).
    let events_out = tempfile::NamedTempFile::new().unwrap();
    let mut events = cd
        .ctr()
        .arg("events")
        .stdout(events_out.reopen().unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let mut child = cd
        .ctr()
        .args([
            "run",
            "--rm",
            "--memory-limit",
            "33554432",
            "--runtime",
            "io.containerd.moat-vm.v2",
            IMAGE,
        ])
        .args([
            "moat-vm-ctr",
            "sh",
            "-c",
            "cat; uname -r; (x=0123456789; while :; do x=$x$x; done); exit 7",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"hello through stdin\n").unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ctr run in a VM did not end in 60 s\n{}", cd.log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    eprintln!("ctr run in a VM: {:?} in {:?}", out.status, t.elapsed());
    assert_eq!(
        text(&out.stdout),
        format!("hello through stdin\n{}\n", releases[0]),
        "stderr: {}",
        text(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(7));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = std::fs::read_to_string(events_out.path()).unwrap_or_default();
        if seen
            .lines()
            .any(|l| l.contains("/tasks/oom") && l.contains("moat-vm-ctr"))
        {
            break;
        }
        if Instant::now() > deadline {
            let _ = events.kill();
            panic!("no /tasks/oom for moat-vm-ctr in ctr events:\n{seen}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = events.kill();
    let _ = events.wait();
    let needle4 = "/run/moat-shim-vm/moat-vm-";
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cd.shim_processes().is_empty() || !procs_with(needle4).is_empty() {
        assert!(
            Instant::now() < deadline,
            "left after ctr run --rm: {:#?}",
            procs_with(needle4)
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    eprintln!("{test}: done in {:?}", t0.elapsed());
}

/// `sh` run by `script`, so that `ctr` has a terminal; `shell` is a sh command line.
fn in_pty(shell: &str) -> std::process::Output {
    run_deadline(
        std::process::Command::new("script").args(["-qec", shell, "/dev/null"]),
        Duration::from_secs(120),
        shell,
    )
}

/// Terminals through the shim's VM mode, the way `ctr` (and CRI's `exec -it`) drive them: an
/// Exec with `terminal` in a running VM container shows a pts, its size follows ResizePty (at
/// start and on the client's SIGWINCH), the exit code comes back; `ctr run -t` gives the init a
/// terminal too; nothing (VM, shim) is left after.
#[test]
fn ctr_vm_terminal_exec_and_resize() {
    let test = "ctr_vm_terminal_exec_and_resize";
    if !have_all(test, &["containerd", "ctr", "qemu-system-x86_64", "script"]) {
        return;
    }
    let Some(shims) = vm_shims(test, vm_agent::agent(), "moat-cri-vm-shims-") else {
        return;
    };
    let cd = CriContainerd::start_with(shims.path(), VM_RUNTIME);
    let work = tempfile::Builder::new()
        .prefix("moat-cri-vm-images-")
        .tempdir()
        .unwrap();
    let (busybox, _) = images(work.path());
    cd.import(&busybox);
    let ctr = {
        let c = cd.ctr();
        let args: Vec<String> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        format!("ctr {}", args.join(" "))
    };
    let runtime = "--runtime io.containerd.moat-vm.v2";
    ok(
        cd.ctr().args([
            "run",
            "-d",
            "--runtime",
            "io.containerd.moat-vm.v2",
            IMAGE,
            "moat-vm-tty",
            "sleep",
            "600",
        ]),
        Duration::from_secs(120),
        "ctr run -d in a VM",
    );
    // The size arrives by ResizePty once the process runs: wait for it to leave 0x0.
    let sized = "i=0; while [ \"$(stty size)\" = \"0 0\" ] && [ $i -lt 100 ]; do sleep 0.1; \
                 i=$((i+1)); done";
    let t = Instant::now();
    let o = in_pty(&format!(
        "stty rows 33 cols 77; {ctr} task exec -t --exec-id e1 moat-vm-tty sh -c '{sized}; tty; \
         stty size; exit 4'"
    ));
    eprintln!("ctr task exec -t in a VM: {:?}", t.elapsed());
    let out = text(&o.stdout).replace('\r', "");
    assert_eq!(o.status.code(), Some(4), "{out}\n{}", cd.log());
    assert!(out.contains("/dev/pts/"), "{out}");
    assert!(out.contains("33 77\n"), "{out}");
    // The client's SIGWINCH becomes a ResizePty, then a Resize in the guest.
    let o = in_pty(&format!(
        "stty rows 10 cols 20; {ctr} task exec -t --exec-id e2 moat-vm-tty sh -c '{sized}; \
         stty size; i=0; while [ \"$(stty size)\" = \"10 20\" ] && [ $i -lt 200 ]; do sleep 0.1; \
         i=$((i+1)); done; stty size' </dev/tty & sleep 5; stty rows 50 cols 90; kill -WINCH $!; \
         wait $!; echo status=$?"
    ));
    let out = text(&o.stdout).replace('\r', "");
    assert!(out.contains("10 20\n50 90\n"), "{out}\n{}", cd.log());
    assert!(out.contains("status=0\n"), "{out}");
    // `ctr run -t`: the init's terminal, sized by ResizePty, its exit code back.
    let o = in_pty(&format!(
        "stty rows 24 cols 100; {ctr} run -t --rm {runtime} {IMAGE} moat-vm-tty-init sh -c \
         '{sized}; tty; stty size; exit 3'"
    ));
    let out = text(&o.stdout).replace('\r', "");
    assert_eq!(o.status.code(), Some(3), "{out}\n{}", cd.log());
    assert!(out.contains("/dev/pts/0\n"), "{out}");
    assert!(out.contains("24 100\n"), "{out}");
    ok(
        cd.ctr().args(["task", "kill", "-s", "KILL", "moat-vm-tty"]),
        Duration::from_secs(30),
        "ctr task kill",
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = run_deadline(
            cd.ctr().args(["task", "delete", "moat-vm-tty"]),
            Duration::from_secs(30),
            "ctr task delete",
        );
        if o.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "{}", text(&o.stderr));
        std::thread::sleep(Duration::from_millis(200));
    }
    ok(
        cd.ctr().args(["container", "delete", "moat-vm-tty"]),
        Duration::from_secs(30),
        "ctr container delete",
    );
    let needle = "/run/moat-shim-vm/moat-vm-";
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cd.shim_processes().is_empty() || !procs_with(needle).is_empty() {
        assert!(
            Instant::now() < deadline,
            "left after the terminal tests: {:#?}",
            procs_with(needle)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
