//! Pod networking of VM pods through Kubernetes' CRI: a private containerd with a CNI bridge
//! network of the test's own (bridge `mvmcri<pid>`, 10.231.78.0/24, on this machine only) runs a
//! `moat-vm` pod of two containers. The VM joins the pod's network namespace (tap + tc redirects),
//! so both containers have the pod IP that CRI reports; the host reaches the pod's httpd on it,
//! and so does a second pod (the namespaces backend's `moat` handler). Removing the pods leaves no
//! tap, QEMU or shim, also when the VM pod's shim was killed with SIGKILL.

#[path = "../../moat-runtime/tests/support/mod.rs"]
mod support;
use support::*;

#[path = "../../moat-runtime/tests/support/vm_agent.rs"]
mod vm_agent;

#[path = "cri/common.rs"]
mod common;
use common::cri_api::*;
use common::*;

use std::time::{Duration, Instant};

const VM_RUNTIME: &str = r#"    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.moat-vm]
      runtime_type = "io.containerd.moat-vm.v2""#;

/// The test's bridge, deleted on drop (the CNI bridge plugin leaves it).
struct Bridge(String);

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.0])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn sandbox_config(cd: &CriContainerd, name: &str, logs: &std::path::Path) -> PodSandboxConfig {
    let uid = format!("{name}-{}", std::process::id());
    pod_config(name, &uid, logs, &cd.cgroup_parent, pod_network())
}

#[test]
fn cri_vm_pod_gets_the_pod_ip_and_a_second_pod_reaches_it() {
    let test = "cri_vm_pod_gets_the_pod_ip_and_a_second_pod_reaches_it";
    if !have_all(test, &["containerd", "ctr", "qemu-system-x86_64"])
        || !std::path::Path::new("/usr/lib/cni/bridge").exists()
    {
        return;
    }
    let Some(shims) = vm_shims(test, vm_agent::agent(), "moat-cri-vmnet-shims-") else {
        return;
    };
    let bridge = Bridge(format!("mvmcri{}", std::process::id() % 100_000));
    let cd = CriContainerd::start_with(shims.path(), VM_RUNTIME);
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "moat-cri-vm-net",
        "plugins": [{
            "type": "bridge",
            "bridge": bridge.0,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": "10.231.78.0/24"}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": cd.path().join("ipam").display().to_string(),
            },
        }],
    });
    std::fs::write(
        cd.path().join("cni/10-moat-test.conflist"),
        serde_json::to_vec_pretty(&conf).unwrap(),
    )
    .unwrap();
    let work = tempfile::Builder::new()
        .prefix("moat-cri-vmnet-images-")
        .tempdir()
        .unwrap();
    let (busybox, pause) = images(work.path());
    cd.import(&busybox);
    cd.import(&pause);
    let logs = cd.path().join("pod-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let cri = Cri::connect(&cd.sock(), cd.log_path());
    // The CRI plugin picks the network config up from its directory (inotify).
    std::thread::sleep(Duration::from_secs(2));

    let cfg_a = sandbox_config(&cd, "moat-vm-net-a", &logs);
    let t = Instant::now();
    let pod_a = start_pod(&cri, &cfg_a, "moat-vm");
    eprintln!("VM pod with a network device started in {:?}", t.elapsed());
    let web = start_container_with(
        &cri,
        &pod_a,
        &cfg_a,
        "web",
        "mkdir -p /tmp/w && echo hello-from-a-vm-pod > /tmp/w/index.html && \
         exec httpd -f -p 8080 -h /tmp/w",
        pod_network(),
    );
    let other = start_container_with(
        &cri,
        &pod_a,
        &cfg_a,
        "other",
        "exec sleep 1000",
        pod_network(),
    );
    let status = cri_ok!(
        cri,
        pod_sandbox_status,
        PodSandboxStatusRequest {
            pod_sandbox_id: pod_a.clone(),
            verbose: false,
        }
    );
    let ip = status
        .status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .unwrap_or_default();
    assert!(ip.starts_with("10.231.78."), "pod IP {ip:?}");
    // Both containers of the pod have the pod IP (they share the guest's network).
    for cid in [&web, &other] {
        let seen = exec_out(&cri, cid, &["ip", "-4", "addr", "show", "eth0"]);
        assert!(seen.contains(&format!("inet {ip}/24")), "{seen}");
    }
    // The host (the bridge's gateway address) reaches the pod.
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let r = (|| -> std::io::Result<String> {
            use std::io::{Read, Write};
            let addr = format!("{ip}:8080").parse().unwrap();
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut b = String::new();
            s.read_to_string(&mut b)?;
            Ok(b)
        })();
        match r {
            Ok(b) if b.contains("hello-from-a-vm-pod") => break b,
            r if Instant::now() > deadline => panic!("no answer from {ip}:8080: {r:?}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    assert!(body.contains(" 200 "), "{body}");
    // A second pod (namespaces backend) reaches it over the bridge.
    let cfg_b = sandbox_config(&cd, "moat-net-b", &logs);
    let pod_b = start_pod(&cri, &cfg_b, "moat");
    let client = start_container_with(
        &cri,
        &pod_b,
        &cfg_b,
        "client",
        "exec sleep 1000",
        pod_network(),
    );
    let got = exec_out(
        &cri,
        &client,
        &["wget", "-q", "-O", "-", &format!("http://{ip}:8080/")],
    );
    assert_eq!(got, "hello-from-a-vm-pod\n");
    stop_and_remove_pod(&cri, &pod_b);
    let t = Instant::now();
    stop_and_remove_pod(&cri, &pod_a);
    eprintln!("VM pod stopped and removed in {:?}", t.elapsed());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cd.shim_processes().is_empty() {
        assert!(
            Instant::now() < deadline,
            "shims left: {:?}",
            cd.shim_processes()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!taps_left(), "a tap is left after RemovePodSandbox");
    assert!(
        pids_with_cmdline(&pod_a).is_empty(),
        "a process of the VM pod is left"
    );

    // A VM pod whose shim is killed: the agent powers the VM off when the connection closes;
    // the taps go with the pod's namespace, which containerd removes with the pod.
    let cfg_c = sandbox_config(&cd, "moat-vm-net-crash", &logs);
    let pod_c = start_pod(&cri, &cfg_c, "moat-vm");
    start_container_with(&cri, &pod_c, &cfg_c, "c", "exec sleep 1000", pod_network());
    assert!(taps_left(), "the VM pod has no tap");
    let shims: Vec<i32> = cd.shim_processes().into_keys().collect();
    // QEMU and virtiofsd of this pod (their run directory names the shim's pid).
    let vm_procs = || -> Vec<i32> {
        shims
            .iter()
            .flat_map(|p| pids_with_cmdline(&format!("/run/moat-shim-vm/moat-vm-{p}-")))
            .collect()
    };
    assert!(!vm_procs().is_empty(), "no QEMU found for the pod");
    for pid in &shims {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while !vm_procs().is_empty() {
        assert!(Instant::now() < deadline, "the VM outlived its shim");
        std::thread::sleep(Duration::from_millis(50));
    }
    stop_and_remove_pod(&cri, &pod_c);
    assert!(!taps_left(), "a tap is left after the shim was killed");
}

/// Whether a `*_moat` tap exists in any named network namespace.
fn taps_left() -> bool {
    let links = std::process::Command::new("ip")
        .args(["-all", "netns", "exec", "ip", "link"])
        .output()
        .unwrap();
    text(&links.stdout).contains("_moat")
}
