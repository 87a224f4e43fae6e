//! What the CRI tests share: a private containerd with the CRI plugin and moat's handlers, a CRI
//! runtime.v1 client over its socket driven from synchronous code (`cri!`, `cri_ok!`), the test
//! images, and probes of what a pod leaves behind.
#![allow(dead_code)]

/// The CRI runtime.v1 messages and client, generated from cri/cri.proto (see its header).
#[allow(clippy::all, dead_code, missing_docs, unused_qualifications)]
#[path = "runtime.v1.rs"]
pub mod cri_api;

use crate::support::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use std::time::Duration;

use cri_api::runtime_service_client::RuntimeServiceClient;
use cri_api::*;
use serde_json::json;
use tonic::transport::Channel;

pub const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-moat-v2");
pub const SHIM_NAME: &str = "containerd-shim-moat-v2";
/// The shim's name for VM pods (runtime type `io.containerd.moat-vm.v2`).
pub const VM_SHIM_NAME: &str = "containerd-shim-moat-vm-v2";
pub const PAUSE_IMAGE: &str = "localhost/moat-pause:test";
/// The CRI plugin keeps its containers and images in this containerd namespace.
pub const K8S_NS: &str = "k8s.io";
/// Every CRI call must answer within this (RunPodSandbox and CreateContainer included).
pub const RPC_LIMIT: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------------
// A private containerd with the CRI plugin
// ---------------------------------------------------------------------------------------------

/// The shared harness's `Containerd` with the CRI plugin enabled and configured with the `moat`
/// runtime handler, its sandbox image, and a CNI configuration directory of its own (the pod uses
/// the host network, so no CNI plugin runs); it also cleans up the pod's cgroups on drop.
pub struct CriContainerd {
    pub inner: Containerd,
    /// The cgroup parent of the pod (cgroupfs driver), relative to the cgroup root; ours to
    /// remove, like the kubelet's.
    pub cgroup_parent: String,
}

impl std::ops::Deref for CriContainerd {
    type Target = Containerd;
    fn deref(&self) -> &Containerd {
        &self.inner
    }
}

/// The CRI plugin's configuration; `{dir}` is the containerd's temporary directory.
/// `extra` is appended to the runtimes table (more handlers, TOML).
pub fn cri_config(extra: &str) -> String {
    cri_config_with(extra, PAUSE_IMAGE, None)
}

/// [`cri_config`] with another sandbox image and, when given, a CNI configuration directory
/// other than the containerd's own (empty) one.
pub fn cri_config_with(extra: &str, sandbox_image: &str, cni_conf: Option<&Path>) -> String {
    format!(
        r#"[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  disable_apparmor = true
  restrict_oom_score_adj = {restrict_oom}
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.moat]
      runtime_type = "io.containerd.moat.v2"
{extra}
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
"#,
        pause = sandbox_image,
        cni = cni_conf
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "{dir}/cni".into()),
        extra = extra,
        // The sandbox asks for oom_score_adj -998; lowering it needs CAP_SYS_RESOURCE, which
        // some CI sandboxes lack: then let containerd clamp it to its own, as for rootless.
        restrict_oom = !has_cap_sys_resource(),
    )
}

impl CriContainerd {
    pub fn start(shim_dir: &Path) -> CriContainerd {
        Self::start_with(shim_dir, "")
    }

    /// With more configuration (`extra`, see [`cri_config`]), another sandbox image and a CNI
    /// configuration directory of the caller's.
    pub fn start_custom(
        shim_dir: &Path,
        extra: &str,
        sandbox_image: &str,
        cni_conf: &Path,
    ) -> CriContainerd {
        let config = cri_config_with(extra, sandbox_image, Some(cni_conf));
        let inner = Containerd::launch(K8S_NS, Some(shim_dir), Some(&config));
        CriContainerd {
            inner,
            cgroup_parent: format!("moat-cri-{}", std::process::id()),
        }
    }

    /// With more runtime handlers (`extra`, see [`cri_config`]).
    pub fn start_with(shim_dir: &Path, extra: &str) -> CriContainerd {
        let inner = Containerd::launch(K8S_NS, Some(shim_dir), Some(&cri_config(extra)));
        std::fs::create_dir_all(inner.path().join("cni")).unwrap();
        CriContainerd {
            inner,
            cgroup_parent: format!("moat-cri-{}", std::process::id()),
        }
    }

    /// The shim processes of this containerd (`-address <our socket>` on the command line), with
    /// their parent pids; `start`/`delete` invocations are left out.
    pub fn shim_processes(&self) -> BTreeMap<i32, (i32, String)> {
        let needle = format!("-address {}", self.sock().display());
        let mut out = BTreeMap::new();
        for pid in pids_with_cmdline(&needle) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| text(&c).replace('\0', " ").trim().to_owned())
                .unwrap_or_default();
            if !cmdline.contains(SHIM_NAME)
                || cmdline.ends_with(" start")
                || cmdline.ends_with(" delete")
            {
                continue;
            }
            if let Some(ppid) = ppid(pid) {
                out.insert(pid, (ppid, cmdline));
            }
        }
        out
    }

    /// Processes in the cgroups below the pod's cgroup parent, in every hierarchy.
    pub fn pod_cgroup_pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for root in cgroup_paths(&self.cgroup_parent) {
            walk_dirs(&root, &mut |d| {
                if let Ok(s) = std::fs::read_to_string(d.join("cgroup.procs")) {
                    pids.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
                }
            });
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }
}

impl Drop for CriContainerd {
    fn drop(&mut self) {
        // Whatever a failed test left: the shims and the pod's processes (containerd itself is
        // stopped and its mounts removed when `inner` drops, after this).
        let shims = self.shim_processes();
        for pid in shims.keys().copied().chain(self.pod_cgroup_pids()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // A shared shim killed here leaves its files (`<hash>.sock`, `.lock`, `.start`,
        // `.pending`, and its worker's `.worker`, `.tasks`, `.log` in /run/moat-shim/shared):
        // ours to remove, no other containerd uses them.
        for (_, cmdline) in shims.values() {
            let sock = cmdline
                .split_whitespace()
                .skip_while(|a| *a != "-socket")
                .nth(1)
                .map(|a| PathBuf::from(a.trim_start_matches("unix://")));
            if let Some(sock) = sock.filter(|s| s.starts_with("/run/moat-shim/shared")) {
                for ext in ["sock", "lock", "start", "pending", "worker", "tasks", "log"] {
                    let f = sock.with_extension(ext);
                    let _ = std::fs::remove_file(&f);
                    let _ = std::fs::remove_dir_all(&f);
                }
            }
        }
        // The pod's cgroup parent is ours (the kubelet's) to remove; the runtime removes the
        // containers' cgroups below it. Deepest first, a few tries while killed processes go.
        for _ in 0..50 {
            let mut left = false;
            for root in cgroup_paths(&self.cgroup_parent) {
                let mut dirs = Vec::new();
                walk_dirs(&root, &mut |d| dirs.push(d.to_owned()));
                dirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
                for d in dirs {
                    if std::fs::remove_dir(&d).is_err() && d.exists() {
                        left = true;
                    }
                }
            }
            if !left {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

pub fn log_tail(path: &Path) -> String {
    let all = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = all.lines().collect();
    format!(
        "containerd log (last lines):\n{}",
        lines[lines.len().saturating_sub(60)..].join("\n")
    )
}

pub fn walk_dirs(d: &Path, f: &mut dyn FnMut(&Path)) {
    if !d.is_dir() {
        return;
    }
    f(d);
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk_dirs(&e.path(), f);
            }
        }
    }
}

pub fn ppid(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// (Rss, Pss) in KiB from /proc/<pid>/smaps_rollup.
pub fn rss_pss_kib(pid: i32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"))
}

/// Mount points at or below `dir`.
pub fn mounts_below(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| Path::new(p).starts_with(dir))
        .map(str::to_owned)
        .collect()
}

/// The busybox image of the shared harness, and a pause image made of the same layer whose
/// entrypoint sleeps, reaps its children, and exits on SIGTERM.
pub fn images(dir: &Path) -> (PathBuf, PathBuf) {
    images_with(dir, |_| {})
}

/// [`images`] with `add` run on the busybox image's rootfs before it is packed.
pub fn images_with(dir: &Path, add: impl FnOnce(&Path)) -> (PathBuf, PathBuf) {
    let busybox = busybox_image_with(dir, add);
    let pause = dir.join("pause");
    std::fs::create_dir_all(&pause).unwrap();
    std::fs::copy(dir.join("image/layer.tar"), pause.join("layer.tar")).unwrap();
    let tarball = dir.join("pause-image.tar");
    docker_archive(
        &pause,
        PAUSE_IMAGE,
        json!({
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Entrypoint": ["/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 1000 & wait; done"],
        }),
        &tarball,
    );
    (busybox, tarball)
}

// ---------------------------------------------------------------------------------------------
// The CRI client
// ---------------------------------------------------------------------------------------------

/// A CRI runtime.v1 client over containerd's unix socket, driven from synchronous test code.
pub struct Cri {
    pub rt: tokio::runtime::Runtime,
    pub client: RuntimeServiceClient<Channel>,
    pub log: PathBuf,
}

impl Cri {
    pub fn connect(sock: &Path, log: PathBuf) -> Cri {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let sock = sock.to_owned();
        let channel = rt
            .block_on(async move {
                // The URI is a placeholder: the connector dials the unix socket.
                let endpoint = tonic::transport::Endpoint::try_from("http://[::1]:50051")?
                    .connect_timeout(Duration::from_secs(10));
                tokio::time::timeout(
                    Duration::from_secs(30),
                    endpoint.connect_with_connector(tower::service_fn(
                        move |_: tonic::transport::Uri| {
                            let sock = sock.clone();
                            async move {
                                let s = tokio::net::UnixStream::connect(sock).await?;
                                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                            }
                        },
                    )),
                )
                .await
                .map_err(|e| -> Box<dyn std::error::Error> { Box::new(e) })?
                .map_err(|e| -> Box<dyn std::error::Error> { Box::new(e) })
            })
            .unwrap_or_else(|e| panic!("connect to the CRI socket: {e}\n{}", log_tail(&log)));
        Cri {
            rt,
            client: RuntimeServiceClient::new(channel),
            log,
        }
    }
}

/// One CRI call, bounded by [`RPC_LIMIT`]: `Result<Response, tonic::Status>`.
#[macro_export]
macro_rules! cri {
    ($cri:expr, $method:ident, $req:expr) => {{
        let mut client = $cri.client.clone();
        let req = $req;
        $cri.rt
            .block_on(async move { tokio::time::timeout(RPC_LIMIT, client.$method(req)).await })
            .unwrap_or_else(|_| {
                panic!(
                    "CRI {} did not answer within {:?}\n{}",
                    stringify!($method),
                    RPC_LIMIT,
                    log_tail(&$cri.log)
                )
            })
            .map(|r| r.into_inner())
    }};
}

/// A CRI call that must succeed.
#[macro_export]
macro_rules! cri_ok {
    ($cri:expr, $method:ident, $req:expr) => {{
        cri!($cri, $method, $req).unwrap_or_else(|e| {
            panic!(
                "CRI {} failed: {e:?}\n{}",
                stringify!($method),
                log_tail(&$cri.log)
            )
        })
    }};
}

/// Kubelet's namespace options for a `hostNetwork: true` pod: the node's network, a PID
/// namespace per container, the pod's IPC namespace.
pub fn host_network() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Node as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// The sandbox config kubelet would send for pod `name` (`uid`), logging under `logs`, in the
/// cgroup parent `cgroup_parent`, with namespace options `ns`.
pub fn pod_config(
    name: &str,
    uid: &str,
    logs: &Path,
    cgroup_parent: &str,
    ns: NamespaceOption,
) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: logs.display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: format!("/{cgroup_parent}"),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(ns),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Kubelet's namespace options for a pod on its own network: the pod's network namespace, a PID
/// namespace per container, the pod's IPC namespace.
pub fn pod_network() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// RunPodSandbox with `cfg` on `handler`: the pod's id.
pub fn start_pod(cri: &Cri, cfg: &PodSandboxConfig, handler: &str) -> String {
    cri_ok!(
        cri,
        run_pod_sandbox,
        RunPodSandboxRequest {
            config: Some(cfg.clone()),
            runtime_handler: handler.into(),
        }
    )
    .pod_sandbox_id
}

/// A busybox container that prints `started-NAME` and sleeps, host network.
pub fn create_and_start(
    cri: &Cri,
    pod: &str,
    sandbox_config: &PodSandboxConfig,
    name: &str,
) -> String {
    let script = format!("echo started-{name}; exec sleep 1000");
    start_container_with(cri, pod, sandbox_config, name, &script, host_network())
}

/// Create and start a busybox container of `pod` running `sh -c script` with namespace options
/// `ns`; returns its id.
pub fn start_container_with(
    cri: &Cri,
    pod: &str,
    sandbox_config: &PodSandboxConfig,
    name: &str,
    script: &str,
    ns: NamespaceOption,
) -> String {
    let sc = LinuxContainerSecurityContext {
        namespace_options: Some(ns),
        ..Default::default()
    };
    let cmd = ["sh", "-c", script];
    start_container_sc(cri, pod, sandbox_config, name, &cmd, sc)
}

/// Create and start a busybox container of `pod` running `command` with security context
/// `sc`; returns its id.
pub fn start_container_sc(
    cri: &Cri,
    pod: &str,
    sandbox_config: &PodSandboxConfig,
    name: &str,
    command: &[&str],
    sc: LinuxContainerSecurityContext,
) -> String {
    let linux = LinuxContainerConfig {
        security_context: Some(sc),
        ..Default::default()
    };
    start_container_linux(cri, pod, sandbox_config, name, command, linux)
}

/// Create and start a busybox container of `pod` running `command` with the Linux settings
/// `linux` (resources, security context); returns its id.
pub fn start_container_linux(
    cri: &Cri,
    pod: &str,
    sandbox_config: &PodSandboxConfig,
    name: &str,
    command: &[&str],
    linux: LinuxContainerConfig,
) -> String {
    let config = ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: IMAGE.into(),
            ..Default::default()
        }),
        command: command.iter().map(|c| c.to_string()).collect(),
        log_path: format!("{name}.log"),
        linux: Some(linux),
        ..Default::default()
    };
    let cid = cri_ok!(
        cri,
        create_container,
        CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(sandbox_config.clone()),
        }
    )
    .container_id;
    cri_ok!(
        cri,
        start_container,
        StartContainerRequest {
            container_id: cid.clone()
        }
    );
    cid
}

/// StopPodSandbox then RemovePodSandbox of `pod`, each required to succeed.
pub fn stop_and_remove_pod(cri: &Cri, pod: &str) {
    cri_ok!(
        cri,
        stop_pod_sandbox,
        StopPodSandboxRequest {
            pod_sandbox_id: pod.into()
        }
    );
    cri_ok!(
        cri,
        remove_pod_sandbox,
        RemovePodSandboxRequest {
            pod_sandbox_id: pod.into()
        }
    );
}

/// Set up a test of VM pods: `None` (the reason printed) without a guest kernel; else
/// `MOAT_AGENT_BIN` set to `agent` (the shims containerd starts inherit its environment) and a
/// directory holding the shim under its plain and VM names, for [`CriContainerd::start_with`].
pub fn vm_shims(test: &str, agent: &Path, prefix: &str) -> Option<tempfile::TempDir> {
    if let Err(e) = moat_vm::assets::ensure_kernel(&moat_vm::assets::cache_dir()) {
        eprintln!("{test}: skipped: no guest kernel: {e}");
        return None;
    }
    std::env::set_var("MOAT_AGENT_BIN", agent);
    let shims = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    for name in [SHIM_NAME, VM_SHIM_NAME] {
        std::os::unix::fs::symlink(SHIM, shims.path().join(name)).unwrap();
    }
    Some(shims)
}

/// ExecSync of `cmd` in container `cid` (60 s at most).
pub fn exec(cri: &Cri, cid: &str, cmd: &[&str]) -> ExecSyncResponse {
    cri_ok!(
        cri,
        exec_sync,
        ExecSyncRequest {
            container_id: cid.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 60,
        }
    )
}

/// The stdout of `cmd` in container `cid`, which must exit 0.
pub fn exec_out(cri: &Cri, cid: &str, cmd: &[&str]) -> String {
    let r = exec(cri, cid, cmd);
    assert_eq!(r.exit_code, 0, "{cmd:?}: {}", text(&r.stderr));
    text(&r.stdout)
}
