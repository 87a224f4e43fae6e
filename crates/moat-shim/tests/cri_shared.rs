//! The shared shim (one `containerd-shim-moat-v2` process for every pod of a node) through
//! Kubernetes' CRI: a private containerd with a handler `moat-shared` (`runtime_type =
//! "io.containerd.moat-shared.v2"`, the shim under its third name).
//!
//! - Several pods are served by one shim process; a container that crashes and a container
//!   whose start fails, in one pod, leave the other pods' containers running and reachable;
//!   removing one pod leaves the shim serving the others; removing the last makes it exit, and
//!   nothing is left (shim, socket, lock files, mounts, cgroups, moat state).
//! - The shared shim's worker (the process behind the keeper containerd talks to) is SIGKILLed:
//!   the keeper restarts it, the new worker re-adopts the pods (they stay ready, their containers
//!   running and reachable), exits during and after the restart are reported with their codes,
//!   a new pod starts, and removal leaves nothing.
//! - The worker is SIGKILLed while the zygote's fork creates a container (its Create): the call
//!   fails (`UNAVAILABLE`), the container created all the same is removed when containerd
//!   deletes the task, the pod lives on, and nothing is left.
//! - The keeper itself is SIGKILLed: containerd cleans up every task it served (see
//!   docs/kubernetes.md, "The shared shim"), the pods can still be stopped and removed, a new pod
//!   gets a new shared shim, and nothing is left afterwards.
//! - containerd restarts: it reconnects to the shim of every task (the shared one, and per-pod
//!   shims alike) through the address the shim's `start` recorded in the bundle; the pods stay
//!   ready, a container's exit after the restart is reported, new pods start, removal is clean.

#[path = "../../moat-runtime/tests/support/mod.rs"]
mod support;
use support::*;

#[path = "cri/common.rs"]
mod common;
use common::cri_api::*;
use common::*;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SHARED_SHIM_NAME: &str = "containerd-shim-moat-shared-v2";
const SHARED_RUNTIME: &str = r#"    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.moat-shared]
      runtime_type = "io.containerd.moat-shared.v2""#;
/// Where the shared shims keep their socket and lock files.
const SHARED_DIR: &str = "/run/moat-shim/shared";

/// A private containerd with the `moat-shared` handler, the images imported, a cgroup parent of
/// the test's own; and the directory of the shim links (kept alive with it).
fn setup(test: &str) -> (CriContainerd, tempfile::TempDir, Cri, PathBuf) {
    let shims = tempfile::Builder::new()
        .prefix("moat-cri-shared-shims-")
        .tempdir()
        .unwrap();
    for name in [SHIM_NAME, SHARED_SHIM_NAME] {
        std::os::unix::fs::symlink(SHIM, shims.path().join(name)).unwrap();
    }
    let mut cd = CriContainerd::start_with(shims.path(), SHARED_RUNTIME);
    // Tests of this file run at once in one process: each its own pod cgroup parent.
    cd.cgroup_parent = format!("moat-cri-{test}-{}", std::process::id());
    let (busybox, pause) = images(cd.path());
    cd.import(&busybox);
    cd.import(&pause);
    let logs = cd.path().join("pod-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let cri = Cri::connect(&cd.sock(), cd.log_path());
    (cd, shims, cri, logs)
}

/// Serving shim processes of `cd` (a zygote or worker is a fork of its shim: left out).
fn serving_shims(cd: &CriContainerd) -> Vec<(i32, String)> {
    let shims = cd.shim_processes();
    shims
        .iter()
        .filter(|(_, (ppid, _))| !shims.contains_key(ppid))
        .map(|(pid, (_, cmd))| (*pid, cmd.clone()))
        .collect()
}

/// The one shared shim serving `cd`'s pods: its pid and the socket it listens on.
fn the_shared_shim(cd: &CriContainerd) -> (i32, PathBuf) {
    let serving = serving_shims(cd);
    assert_eq!(
        serving.len(),
        1,
        "one shim process should serve every pod: {serving:#?}\n{}",
        cd.log()
    );
    let (pid, cmdline) = &serving[0];
    let socket = cmdline
        .split_whitespace()
        .skip_while(|a| *a != "-socket")
        .nth(1)
        .map(|a| PathBuf::from(a.trim_start_matches("unix://")))
        .expect("the shim's -socket argument");
    assert!(
        socket.starts_with(SHARED_DIR),
        "the shared shim listens on {} (not under {SHARED_DIR})",
        socket.display()
    );
    (*pid, socket)
}

/// Run pod `name` with the `moat-shared` handler.
fn run_pod(cri: &Cri, cd: &CriContainerd, logs: &Path, name: &str) -> (String, PodSandboxConfig) {
    run_pod_with(cri, cd, logs, name, "moat-shared")
}

fn run_pod_with(
    cri: &Cri,
    cd: &CriContainerd,
    logs: &Path,
    name: &str,
    handler: &str,
) -> (String, PodSandboxConfig) {
    let config = pod_config(
        name,
        &format!("{name}-{}", std::process::id()),
        logs,
        &cd.cgroup_parent,
        host_network(),
    );
    let pod = start_pod(cri, &config, handler);
    (pod, config)
}

/// The CRI state of container `cid` (`ContainerState`).
fn container_state(cri: &Cri, cid: &str) -> i32 {
    let listed = cri_ok!(
        cri,
        list_containers,
        ListContainersRequest {
            filter: Some(ContainerFilter {
                id: cid.into(),
                ..Default::default()
            }),
        }
    )
    .containers;
    assert_eq!(listed.len(), 1, "container {cid}: {listed:?}");
    listed[0].state
}

fn wait_for(what: &str, cd: &CriContainerd, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {limit:?}\n{}",
            cd.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn exec_echo(cri: &Cri, cid: &str) -> (String, i32) {
    let r = cri_ok!(
        cri,
        exec_sync,
        ExecSyncRequest {
            container_id: cid.into(),
            cmd: vec!["echo".into(), "alive".into()],
            timeout: 30,
        }
    );
    (text(&r.stdout), r.exit_code)
}

/// The shared shim's files for `socket` (`<hash>.sock`, `.lock`, `.start`, `.pending`).
fn shared_files(socket: &Path) -> Vec<PathBuf> {
    let stem = socket.file_stem().unwrap().to_string_lossy().into_owned();
    std::fs::read_dir(SHARED_DIR)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(&stem))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Nothing of `cd`'s pods is left: no pod or container, no shim, no shared-shim file, no mount,
/// no cgroup or moat state of `ids`, no process in the pods' cgroups.
fn assert_nothing_left(cri: &Cri, cd: &CriContainerd, socket: &Path, ids: &[String]) {
    let left = cri_ok!(
        cri,
        list_pod_sandbox,
        ListPodSandboxRequest { filter: None }
    )
    .items;
    assert!(left.is_empty(), "pods left: {left:?}");
    let left = cri_ok!(cri, list_containers, ListContainersRequest { filter: None }).containers;
    assert!(left.is_empty(), "containers left: {left:?}");
    wait_for("the shared shim exits", cd, Duration::from_secs(10), || {
        cd.shim_processes().is_empty()
    });
    let files = shared_files(socket);
    assert!(files.is_empty(), "shared shim files left: {files:?}");
    let mounts = mounts_below(cd.path());
    assert!(mounts.is_empty(), "mounts left: {mounts:#?}");
    for id in ids {
        assert_no_cgroup(&format!("{}/{id}", cd.cgroup_parent));
        let state = Path::new("/run/moat-shim").join(K8S_NS).join(id);
        assert!(!state.exists(), "moat state left at {}", state.display());
    }
    let procs = cd.pod_cgroup_pids();
    assert!(
        procs.is_empty(),
        "processes left in the pods' cgroups: {procs:?}"
    );
}

/// Two pods of `handler`: one with a container that keeps running ("steady"), one with a
/// container that exits with 7 once `/tmp/go` exists ("waiter", see [`release_waiter`]):
/// (pod 1, steady, pod 2, its config, waiter).
fn steady_and_waiter(
    cri: &Cri,
    cd: &CriContainerd,
    logs: &Path,
    handler: &str,
) -> (String, String, String, PodSandboxConfig, String) {
    let (pod1, config1) = run_pod_with(cri, cd, logs, "steady", handler);
    let steady = create_and_start(cri, &pod1, &config1, "steady");
    let (pod2, config2) = run_pod_with(cri, cd, logs, "waiter", handler);
    let waiter = start_container_with(
        cri,
        &pod2,
        &config2,
        "waiter",
        "while [ ! -e /tmp/go ]; do sleep 0.1; done; exit 7",
        host_network(),
    );
    (pod1, steady, pod2, config2, waiter)
}

/// Tell the waiter of [`steady_and_waiter`] to exit, and wait until the CRI reports it exited.
fn release_waiter(cri: &Cri, cd: &CriContainerd, waiter: &str) {
    let r = cri_ok!(
        cri,
        exec_sync,
        ExecSyncRequest {
            container_id: waiter.to_owned(),
            cmd: vec!["touch".into(), "/tmp/go".into()],
            timeout: 30,
        }
    );
    assert_eq!(r.exit_code, 0, "{r:?}");
    wait_for(
        "the waiter's exit is reported",
        cd,
        Duration::from_secs(20),
        || container_state(cri, waiter) == ContainerState::ContainerExited as i32,
    );
}

/// Every pod of `pods` is ready.
fn assert_ready(cri: &Cri, cd: &CriContainerd, pods: &[&String]) {
    for pod in pods {
        let st = cri_ok!(
            cri,
            pod_sandbox_status,
            PodSandboxStatusRequest {
                pod_sandbox_id: (*pod).clone(),
                verbose: false,
            }
        );
        assert_eq!(
            st.status.map(|s| s.state),
            Some(PodSandboxState::SandboxReady as i32),
            "{pod}\n{}",
            cd.log()
        );
    }
}

/// A new pod of `handler` with a running container that answers an exec; its ids go to `ids`.
fn newcomer(
    cri: &Cri,
    cd: &CriContainerd,
    logs: &Path,
    handler: &str,
    ids: &mut Vec<String>,
) -> String {
    let (pod, config) = run_pod_with(cri, cd, logs, "newcomer", handler);
    let cid = create_and_start(cri, &pod, &config, "newcomer");
    ids.extend([pod.clone(), cid.clone()]);
    assert_eq!(exec_echo(cri, &cid), ("alive\n".into(), 0));
    pod
}

#[test]
fn shared_shim_serves_pods_and_isolates_their_failures() {
    let test = "shared_shim_serves_pods_and_isolates_their_failures";
    if !have_all(test, &["containerd", "ctr"]) {
        return;
    }
    let t0 = Instant::now();
    let (cd, _shims, cri, logs) = setup("shared-pods");
    let mut ids = Vec::new();
    let mut pods = Vec::new();
    for n in 1..=3 {
        let (pod, config) = run_pod(&cri, &cd, &logs, &format!("shared{n}"));
        let cid = create_and_start(&cri, &pod, &config, &format!("sleeper{n}"));
        ids.extend([pod.clone(), cid.clone()]);
        pods.push((pod, config, cid));
    }
    let (shim, socket) = the_shared_shim(&cd);
    eprintln!(
        "{test}: 3 pods in shim {shim} ({}) after {:?}",
        socket.display(),
        t0.elapsed()
    );

    // In pod 2: a container that crashes (exit 3) and one whose start fails.
    let (pod2, config2, _) = &pods[1];
    let crasher = start_container_with(
        &cri,
        pod2,
        config2,
        "crasher",
        "echo crashing; exit 3",
        host_network(),
    );
    ids.push(crasher.clone());
    wait_for("the crasher exits", &cd, Duration::from_secs(20), || {
        container_state(&cri, &crasher) == ContainerState::ContainerExited as i32
    });
    let log = std::fs::read_to_string(logs.join("crasher.log")).unwrap_or_default();
    assert!(log.contains("stdout F crashing"), "crasher.log: {log:?}");
    let bad = ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "no-such-binary".into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: IMAGE.into(),
            ..Default::default()
        }),
        command: vec!["/no/such/binary".into()],
        log_path: "no-such-binary.log".into(),
        ..Default::default()
    };
    let bad_id = cri!(
        cri,
        create_container,
        CreateContainerRequest {
            pod_sandbox_id: pod2.clone(),
            config: Some(bad),
            sandbox_config: Some(config2.clone()),
        }
    );
    let failed = match bad_id {
        Err(e) => format!("CreateContainer: {e}"),
        Ok(r) => {
            ids.push(r.container_id.clone());
            match cri!(
                cri,
                start_container,
                StartContainerRequest {
                    container_id: r.container_id.clone()
                }
            ) {
                Err(e) => format!("StartContainer: {e}"),
                Ok(_) => panic!("a container running /no/such/binary started"),
            }
        }
    };
    eprintln!("{test}: the bad container failed: {failed}");
    assert!(failed.contains("/no/such/binary"), "{failed}");

    // The other pods' containers (and pod 2's sleeper) run on, served by the same shim.
    for (_, _, cid) in &pods {
        let st = container_state(&cri, cid);
        assert_eq!(st, ContainerState::ContainerRunning as i32, "{cid}");
        assert_eq!(exec_echo(&cri, cid), ("alive\n".into(), 0));
    }
    assert_eq!(the_shared_shim(&cd).0, shim, "the shared shim changed");

    // Removing pod 1 leaves the shim serving pods 2 and 3.
    stop_and_remove_pod(&cri, &pods[0].0);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(the_shared_shim(&cd).0, shim, "the shared shim changed");
    for (_, _, cid) in &pods[1..] {
        assert_eq!(exec_echo(&cri, cid), ("alive\n".into(), 0));
    }
    // A new pod joins the same shim.
    let (pod4, config4) = run_pod(&cri, &cd, &logs, "shared4");
    let cid4 = create_and_start(&cri, &pod4, &config4, "sleeper4");
    ids.extend([pod4.clone(), cid4.clone()]);
    assert_eq!(
        the_shared_shim(&cd).0,
        shim,
        "the new pod got a shim of its own"
    );
    assert_eq!(exec_echo(&cri, &cid4), ("alive\n".into(), 0));

    // The last pod removed, the shim exits and nothing is left.
    for pod in [&pods[1].0, &pods[2].0, &pod4] {
        stop_and_remove_pod(&cri, pod);
    }
    assert_nothing_left(&cri, &cd, &socket, &ids);
    eprintln!("{test}: done in {:?}", t0.elapsed());
}

/// The CRI's exit code of container `cid` (`ContainerStatus`).
fn exit_code(cri: &Cri, cid: &str) -> i32 {
    cri_ok!(
        cri,
        container_status,
        ContainerStatusRequest {
            container_id: cid.into(),
            verbose: false,
        }
    )
    .status
    .map(|s| s.exit_code)
    .unwrap_or(-1)
}

/// The shared shim's worker: the child of the keeper serving the private `.worker` socket.
fn the_worker(cd: &CriContainerd, keeper: i32) -> Option<i32> {
    cd.shim_processes()
        .into_iter()
        .find(|(_, (ppid, cmd))| *ppid == keeper && cmd.contains(".worker"))
        .map(|(pid, _)| pid)
}

/// The state letter of `pid` (`R`, `S`, `Z`, ...), `None` once it is gone.
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.trim().chars().next()
}

#[test]
fn shared_shim_worker_killed_then_pods_readopted() {
    let test = "shared_shim_worker_killed_then_pods_readopted";
    if !have_all(test, &["containerd", "ctr"]) {
        return;
    }
    let t0 = Instant::now();
    let (cd, _shims, cri, logs) = setup("shared-readopt");
    let (pod1, steady, pod2, config2, waiter) = steady_and_waiter(&cri, &cd, &logs, "moat-shared");
    // Exits with 9 on SIGTERM: sent while no worker runs.
    let marker = format!("downer-{}", std::process::id());
    let downer = start_container_with(
        &cri,
        &pod2,
        &config2,
        "downer",
        &format!("trap 'exit 9' TERM; while true; do sleep 0.1; done # {marker}"),
        host_network(),
    );
    let mut ids = vec![
        pod1.clone(),
        steady.clone(),
        pod2.clone(),
        waiter.clone(),
        downer.clone(),
    ];
    let (keeper, socket) = the_shared_shim(&cd);
    let worker = the_worker(&cd, keeper).expect("the keeper's worker");
    // The downer's shell (not a child it forked for `sleep`, which carries its command line
    // until it executes).
    let found = pids_with_cmdline(&marker);
    let downer_pid: Vec<i32> = found
        .iter()
        .copied()
        .filter(|p| ppid(*p).is_some_and(|pp| !found.contains(&pp)))
        .collect();
    assert_eq!(downer_pid.len(), 1, "the downer: {found:?}");
    let downer_pid = downer_pid[0];

    // Hold the keeper (it would restart the worker at once), kill the worker, and make the
    // downer exit while no worker runs: both are then the stopped keeper's zombies.
    let signal = |pid: i32, sig| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    signal(keeper, nix::sys::signal::Signal::SIGSTOP).unwrap();
    signal(worker, nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_for("the worker dies", &cd, Duration::from_secs(10), || {
        proc_state(worker) == Some('Z')
    });
    signal(downer_pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    wait_for("the downer exits", &cd, Duration::from_secs(10), || {
        proc_state(downer_pid) == Some('Z')
    });
    assert_eq!(
        ppid(downer_pid),
        Some(keeper),
        "the downer was reparented to the keeper"
    );
    let killed = Instant::now();
    signal(keeper, nix::sys::signal::Signal::SIGCONT).unwrap();
    eprintln!("{test}: killed the worker {worker} of keeper {keeper}");
    wait_for("a new worker", &cd, Duration::from_secs(20), || {
        the_worker(&cd, keeper).is_some_and(|w| w != worker)
    });
    // The first request served by the new worker.
    let (out, code) = exec_echo(&cri, &steady);
    eprintln!(
        "{test}: the new worker {:?} answered an ExecSync {:?} after the keeper resumed",
        the_worker(&cd, keeper),
        killed.elapsed()
    );
    assert_eq!(
        (out.as_str(), code),
        (
            "alive
", 0
        )
    );

    // The pods are ready, their containers running (but the downer, exited with 9).
    assert_ready(&cri, &cd, &[&pod1, &pod2]);
    wait_for(
        "the downer's exit is reported",
        &cd,
        Duration::from_secs(20),
        || container_state(&cri, &downer) == ContainerState::ContainerExited as i32,
    );
    assert_eq!(exit_code(&cri, &downer), 9, "the downer's exit code");
    for cid in [&steady, &waiter] {
        assert_eq!(
            container_state(&cri, cid),
            ContainerState::ContainerRunning as i32,
            "{cid}"
        );
        assert_eq!(exec_echo(&cri, cid), ("alive\n".into(), 0));
    }
    assert_eq!(the_shared_shim(&cd).0, keeper, "the keeper changed");

    // An exit after the restart is reported with its code.
    release_waiter(&cri, &cd, &waiter);
    assert_eq!(exit_code(&cri, &waiter), 7, "the waiter's exit code");
    assert_eq!(
        container_state(&cri, &steady),
        ContainerState::ContainerRunning as i32
    );

    // A new pod joins the same keeper; then every pod is removed and nothing is left.
    let pod3 = newcomer(&cri, &cd, &logs, "moat-shared", &mut ids);
    assert_eq!(the_shared_shim(&cd).0, keeper, "the keeper changed");
    let log = shared_files(&socket)
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    eprintln!("{test}: the shared shim's log:\n{log}");
    for pod in [&pod1, &pod2, &pod3] {
        stop_and_remove_pod(&cri, pod);
    }
    assert_nothing_left(&cri, &cd, &socket, &ids);
    eprintln!("{test}: done in {:?}", t0.elapsed());
}

#[test]
fn shared_shim_keeper_killed_then_pods_removed_and_new_pods_served() {
    let test = "shared_shim_keeper_killed_then_pods_removed_and_new_pods_served";
    if !have_all(test, &["containerd", "ctr"]) {
        return;
    }
    let t0 = Instant::now();
    let (cd, _shims, cri, logs) = setup("shared-kill");
    let mut ids = Vec::new();
    let mut pods = Vec::new();
    for n in 1..=2 {
        let (pod, config) = run_pod(&cri, &cd, &logs, &format!("victim{n}"));
        let cid = create_and_start(&cri, &pod, &config, &format!("v{n}"));
        ids.extend([pod.clone(), cid.clone()]);
        pods.push((pod, cid));
    }
    let (shim, socket) = the_shared_shim(&cd);
    let worker = the_worker(&cd, shim).expect("the keeper's worker");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eprintln!("{test}: killed the shared shim's keeper {shim}");
    // The worker dies with it (its parent-death signal).
    wait_for("the worker dies", &cd, Duration::from_secs(10), || {
        proc_state(worker).is_none()
    });
    // containerd sees every task's connection close and cleans up after the shim.
    for (_, cid) in &pods {
        wait_for(
            "the containers are reported exited",
            &cd,
            Duration::from_secs(30),
            || container_state(&cri, cid) == ContainerState::ContainerExited as i32,
        );
    }
    for (pod, _) in &pods {
        let st = cri_ok!(
            cri,
            pod_sandbox_status,
            PodSandboxStatusRequest {
                pod_sandbox_id: pod.clone(),
                verbose: false,
            }
        );
        assert_eq!(
            st.status.map(|s| s.state),
            Some(PodSandboxState::SandboxNotready as i32)
        );
    }
    // No process of the pods is left running unseen by containerd.
    wait_for(
        "the pods' processes are gone",
        &cd,
        Duration::from_secs(20),
        || cd.pod_cgroup_pids().is_empty(),
    );

    // A new pod while the old ones are still there: a new shared shim.
    let (pod3, config3) = run_pod(&cri, &cd, &logs, "after");
    let cid3 = create_and_start(&cri, &pod3, &config3, "a1");
    ids.extend([pod3.clone(), cid3.clone()]);
    let (shim2, socket2) = the_shared_shim(&cd);
    assert_ne!(shim2, shim);
    assert_eq!(socket2, socket, "the well-known socket moved");
    assert_eq!(exec_echo(&cri, &cid3), ("alive\n".into(), 0));

    // The old pods can be stopped and removed; then the new one; nothing is left.
    for (pod, _) in &pods {
        stop_and_remove_pod(&cri, pod);
    }
    assert_eq!(exec_echo(&cri, &cid3), ("alive\n".into(), 0));
    stop_and_remove_pod(&cri, &pod3);
    assert_nothing_left(&cri, &cd, &socket, &ids);
    eprintln!("{test}: done in {:?}", t0.elapsed());
}

/// Pods of `handler` outlive a restart of containerd: containerd reconnects to their shims
/// through the address each bundle records; exits after the restart are still reported.
fn pods_outlive_a_containerd_restart(test: &str, handler: &str) {
    if !have_all(test, &["containerd", "ctr"]) {
        return;
    }
    let t0 = Instant::now();
    let (mut cd, _shims, cri, logs) = setup(&format!("{handler}-restart"));
    let mut ids = Vec::new();
    let (pod1, steady, pod2, _, waiter) = steady_and_waiter(&cri, &cd, &logs, handler);
    ids.extend([pod1.clone(), steady.clone(), pod2.clone(), waiter.clone()]);
    let shims = serving_shims(&cd);
    drop(cri);

    cd.inner.restart();
    let cri = Cri::connect(&cd.sock(), cd.log_path());
    // The CRI plugin answers "not initialized" until it has recovered its pods.
    wait_for(
        "the CRI plugin recovers",
        &cd,
        Duration::from_secs(30),
        || {
            cri!(
                cri,
                list_pod_sandbox,
                ListPodSandboxRequest { filter: None }
            )
            .is_ok()
        },
    );
    eprintln!("{test}: containerd restarted after {:?}", t0.elapsed());
    // containerd reconnected to the shims of every task: the pods are ready, their containers
    // running, served by the same shim processes.
    assert_ready(&cri, &cd, &[&pod1, &pod2]);
    for cid in [&steady, &waiter] {
        assert_eq!(
            container_state(&cri, cid),
            ContainerState::ContainerRunning as i32,
            "{cid}"
        );
    }
    assert_eq!(serving_shims(&cd), shims, "the shims changed");
    assert_eq!(exec_echo(&cri, &steady), ("alive\n".into(), 0));

    // An exit after the restart is still reported.
    release_waiter(&cri, &cd, &waiter);
    assert_eq!(
        container_state(&cri, &steady),
        ContainerState::ContainerRunning as i32
    );

    // A new pod (for the shared shim: in the same shim); then every pod is removed and nothing
    // is left.
    let pod3 = newcomer(&cri, &cd, &logs, handler, &mut ids);
    let socket = if handler == "moat-shared" {
        let (shim, socket) = the_shared_shim(&cd);
        assert_eq!(vec![shim], shims.iter().map(|s| s.0).collect::<Vec<_>>());
        socket
    } else {
        PathBuf::from(SHARED_DIR).join("none.sock")
    };
    for pod in [&pod1, &pod2, &pod3] {
        stop_and_remove_pod(&cri, pod);
    }
    assert_nothing_left(&cri, &cd, &socket, &ids);
    eprintln!("{test}: done in {:?}", t0.elapsed());
}

#[test]
fn shared_shim_outlives_a_containerd_restart() {
    pods_outlive_a_containerd_restart("shared_shim_outlives_a_containerd_restart", "moat-shared");
}

#[test]
fn per_pod_shims_outlive_a_containerd_restart() {
    pods_outlive_a_containerd_restart("per_pod_shims_outlive_a_containerd_restart", "moat");
}

#[test]
fn shared_shim_worker_killed_during_a_create_leaves_nothing() {
    let test = "shared_shim_worker_killed_during_a_create_leaves_nothing";
    if !have_all(test, &["containerd", "ctr"]) {
        return;
    }
    let t0 = Instant::now();
    let (cd, _shims, cri, logs) = setup("shared-midcreate");
    let (pod, config) = run_pod(&cri, &cd, &logs, "midcreate");
    let steady = create_and_start(&cri, &pod, &config, "steady");
    let mut ids = vec![pod.clone(), steady.clone()];
    let (keeper, socket) = the_shared_shim(&cd);
    let worker = the_worker(&cd, keeper).expect("the keeper's worker");
    let zygote = cd
        .shim_processes()
        .into_iter()
        .find(|(_, (ppid, _))| *ppid == worker)
        .map(|(pid, _)| pid)
        .expect("the worker's zygote");

    // The task's Create (in StartContainer) reaches the zygote, which forks a process to create
    // the container: the worker is killed while that process works.
    let victim = cri_ok!(
        cri,
        create_container,
        CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: "victim".into(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: IMAGE.into(),
                    ..Default::default()
                }),
                command: vec!["sleep".into(), "1000".into()],
                log_path: "victim.log".into(),
                ..Default::default()
            }),
            sandbox_config: Some(config.clone()),
        }
    )
    .container_id;
    ids.push(victim.clone());
    let watcher = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            for e in std::fs::read_dir("/proc").unwrap().flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                if ppid(pid) == Some(zygote) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(worker),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    return true;
                }
            }
        }
        false
    });
    let started = cri!(
        cri,
        start_container,
        StartContainerRequest {
            container_id: victim.clone()
        }
    );
    let killed = watcher.join().unwrap();
    assert!(killed, "no create process seen");
    eprintln!("{test}: StartContainer with the worker killed during its Create: {started:?}");
    wait_for("a new worker", &cd, Duration::from_secs(20), || {
        the_worker(&cd, keeper).is_some_and(|w| w != worker)
    });
    // The pod lives on: its other container answers, a new container starts.
    assert_eq!(exec_echo(&cri, &steady), ("alive\n".into(), 0));
    let after = create_and_start(&cri, &pod, &config, "after");
    ids.push(after.clone());
    assert_eq!(exec_echo(&cri, &after), ("alive\n".into(), 0));
    let log = shared_files(&socket)
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    eprintln!("{test}: the shared shim's log:\n{log}");
    // Nothing of the half-created container is left once the pod is removed.
    stop_and_remove_pod(&cri, &pod);
    assert_nothing_left(&cri, &cd, &socket, &ids);
    eprintln!("{test}: done in {:?}", t0.elapsed());
}
