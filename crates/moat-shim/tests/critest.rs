//! Kubernetes' CRI validation suite (`critest` of kubernetes-sigs/cri-tools v1.26.1, CRI v1) and
//! `crictl` against a private containerd 1.6 with the CRI plugin, a bridge + portmap CNI network
//! and the stand-in images of `critest/images.rs` served from a local registry (see
//! `critest/env.rs`). critest runs once with `--runtime-handler runc` and once with `moat`; every
//! spec that passes with runc must pass with moat (the two lists are compared, no counts are
//! hard-coded). Set `MOAT_CRITEST_VM=1` to run the `moat-vm` handler too (slow under TCG; its
//! results are reported, not compared) with the static test agent, `MOAT_CRITEST_VM=dynamic` with
//! the agent the shim finds beside itself. `MOAT_CRITEST_SHARED=1` adds a run with `moat-shared`
//! (the shared shim, one shim process for every pod), compared with runc like `moat`. The results of each run are printed and written to
//! `$CARGO_TARGET_TMPDIR/critest/<handler>.txt`.
//!
//! Skipped, with the reason printed, when no Go toolchain or no cri-tools sources can be had.

#[path = "../../moat-runtime/tests/support/mod.rs"]
mod support;
use support::*;

#[path = "../../moat-image/tests/common/registry.rs"]
#[allow(dead_code)]
mod registry;

#[path = "cri/common.rs"]
mod common;

#[path = "critest/crictl.rs"]
mod crictl;
#[path = "critest/env.rs"]
mod env;
#[path = "critest/images.rs"]
mod images;

use env::*;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The tests of this file run one at a time (2 cores; critest's host ports).
static SERIAL: Mutex<()> = Mutex::new(());

/// What critest reported for one spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Passed,
    Failed,
    Skipped,
}

struct Run {
    handler: String,
    specs: BTreeMap<String, Outcome>,
    wall: Duration,
}

impl Run {
    fn count(&self, o: Outcome) -> usize {
        self.specs.values().filter(|v| **v == o).count()
    }

    fn summary(&self) -> String {
        format!(
            "critest --runtime-handler {}: {} passed, {} failed, {} skipped in {:.0?}",
            self.handler,
            self.count(Outcome::Passed),
            self.count(Outcome::Failed),
            self.count(Outcome::Skipped),
            self.wall
        )
    }

    fn record(&self, log: &str) {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("critest");
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = format!("{}\n", self.summary());
        for (name, o) in &self.specs {
            s.push_str(&format!("{o:?}\t{name}\n"));
        }
        std::fs::write(dir.join(format!("{}.txt", self.handler)), s).unwrap();
        std::fs::write(dir.join(format!("{}.log", self.handler)), log).unwrap();
    }
}

/// The specs of a ginkgo v2 JSON report: full text -> outcome.
fn parse_report(path: &Path) -> BTreeMap<String, Outcome> {
    let v: serde_json::Value = serde_json::from_slice(
        &std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())),
    )
    .unwrap_or_else(|e| panic!("parse {}: {e}", path.display()));
    let mut out = BTreeMap::new();
    for report in v.as_array().into_iter().flatten() {
        for s in report["SpecReports"].as_array().into_iter().flatten() {
            if s["LeafNodeType"] != "It" {
                continue;
            }
            let mut name: Vec<String> = s["ContainerHierarchyTexts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect();
            name.push(s["LeafNodeText"].as_str().unwrap_or_default().to_owned());
            let o = match s["State"].as_str().unwrap_or_default() {
                "passed" => Outcome::Passed,
                "skipped" | "pending" => Outcome::Skipped,
                _ => Outcome::Failed,
            };
            out.insert(name.join(" "), o);
        }
    }
    out
}

/// Run critest with `handler` against `env`.
fn critest(env: &CriEnv, handler: &str, limit: Duration) -> Run {
    critest_focus(
        env,
        handler,
        &std::env::var("MOAT_CRITEST_FOCUS").unwrap_or_default(),
        handler,
        limit,
    )
}

/// Run critest with `handler` on the specs matching `focus` (all if empty); `label` names the
/// run's report and record.
fn critest_focus(env: &CriEnv, handler: &str, focus: &str, label: &str, limit: Duration) -> Run {
    let report = env.work.path().join(format!("report-{label}.json"));
    let t = Instant::now();
    let o = run_deadline(
        Command::new(env.tools.join("critest"))
            .arg(format!("--runtime-endpoint={}", env.endpoint()))
            .arg(format!("--image-endpoint={}", env.endpoint()))
            .arg(format!("--runtime-handler={handler}"))
            .arg("--ginkgo.no-color")
            .arg(format!("--ginkgo.json-report={}", report.display()))
            .arg("--ginkgo.timeout=40m")
            .arg(format!("--ginkgo.focus={focus}"))
            // critest runs `ipcmk` and talks to the pods from the host.
            .env("PATH", std::env::var("PATH").unwrap_or_default()),
        limit,
        &format!("critest --runtime-handler {handler}"),
    );
    let log = format!("{}\n{}", text(&o.stdout), text(&o.stderr));
    let run = Run {
        handler: label.to_owned(),
        specs: parse_report(&report),
        wall: t.elapsed(),
    };
    assert!(
        !run.specs.is_empty(),
        "critest --runtime-handler {handler} reported no spec ({}):\n{log}",
        o.status
    );
    run.record(&log);
    eprintln!("{}", run.summary());
    for (name, o) in &run.specs {
        if *o == Outcome::Failed {
            eprintln!("  FAILED [{handler}]: {name}");
        }
    }
    // Whatever a failed spec left, so the next run starts clean.
    env.remove_all_pods();
    run
}

#[test]
fn critest_moat_passes_every_spec_runc_passes() {
    let test = "critest_moat_passes_every_spec_runc_passes";
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !have_all(
        test,
        &[
            "containerd",
            "ctr",
            "runc",
            "docker-registry",
            "skopeo",
            "iptables",
            "ipcmk",
        ],
    ) {
        return;
    }
    let Some(tools) = cri_tools(test) else {
        return;
    };
    let t0 = Instant::now();
    let vm_mode = std::env::var("MOAT_CRITEST_VM").unwrap_or_default();
    let vm = !vm_mode.is_empty();
    // `MOAT_CRITEST_VM=dynamic`: the agent the shim finds beside itself (the default set-up).
    if vm && vm_mode != "dynamic" {
        // The static guest agent, in containerd's environment (the shims inherit it).
        std::env::set_var("MOAT_AGENT_BIN", vm_agent_path());
    }
    let env = CriEnv::start(tools, 1);
    eprintln!("{test}: environment up in {:?}", t0.elapsed());
    let runc = critest(&env, "runc", Duration::from_secs(30 * 60));
    let moat = critest(&env, "moat", Duration::from_secs(30 * 60));
    // The shared shim (one shim for every pod), on request: 80 s more.
    let shared = (std::env::var("MOAT_CRITEST_SHARED").as_deref() == Ok("1"))
        .then(|| critest(&env, "moat-shared", Duration::from_secs(30 * 60)));
    if vm {
        critest(&env, "moat-vm", Duration::from_secs(60 * 60));
    }

    // containerd's log (the shims log there too), kept for a failure's post-mortem.
    let _ = std::fs::copy(
        env.cd.log_path(),
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("critest/containerd.log"),
    );
    // The environment must work: runc passes most of the suite.
    assert!(
        runc.count(Outcome::Passed) > runc.count(Outcome::Failed),
        "runc fails more specs than it passes: the environment is broken\n{}",
        runc.summary()
    );
    let mut failing = twice_failing(&env, &runc, &moat);
    if let Some(shared) = &shared {
        failing.extend(twice_failing(&env, &runc, shared));
    }
    assert!(
        failing.is_empty(),
        "specs passing with runc and not with moat, twice ({}; logs in {}/critest):\n{failing:#?}",
        moat.summary(),
        env!("CARGO_TARGET_TMPDIR")
    );

    let sock = env.cd.sock();
    drop(env);
    assert_left_nothing(&sock);
    eprintln!("{test}: done in {:?}", t0.elapsed());
}

/// The specs that pass with runc and fail with `run`'s handler, twice: a spec that fails once is
/// run again alone: one that passes then is reported as flaky (loudly, and in the record:
/// docs/kubernetes.md lists the known one), one that fails again is returned, with the handler.
fn twice_failing(env: &CriEnv, runc: &Run, run: &Run) -> Vec<String> {
    let handler = &run.handler;
    let regressions: Vec<String> = runc
        .specs
        .iter()
        .filter(|(n, o)| **o == Outcome::Passed && run.specs.get(*n) != Some(&Outcome::Passed))
        .map(|(n, _)| n.clone())
        .collect();
    let mut failing = Vec::new();
    for name in &regressions {
        let leaf = name.rsplit(" runtime should ").next().unwrap_or(name);
        let focus: String = leaf
            .chars()
            .map(|c| {
                if c.is_alphanumeric() || c == ' ' {
                    c.to_string()
                } else {
                    format!("\\{c}")
                }
            })
            .collect();
        let label = format!("{handler}-retry");
        let again = critest_focus(env, handler, &focus, &label, Duration::from_secs(600));
        if again.specs.get(name) == Some(&Outcome::Passed) {
            eprintln!("FLAKY with {handler} (failed, then passed alone): {name}");
        } else {
            failing.push(format!("[{handler}] {name}"));
        }
    }
    failing
}

#[path = "../../moat-runtime/tests/support/vm_agent.rs"]
mod vm_agent;

fn vm_agent_path() -> PathBuf {
    vm_agent::agent().to_owned()
}

/// After the environment is dropped: no shim of its containerd (`-address <sock>`), no bridge.
fn assert_left_nothing(sock: &Path) {
    assert_no_process(&format!("-address {}", sock.display()));
    for n in [1, 2] {
        let bridge = format!("/sys/class/net/moatcri{n}");
        assert!(!Path::new(&bridge).exists(), "{bridge} left behind");
    }
}

#[test]
fn crictl_drives_a_moat_pod_and_a_moat_vm_pod() {
    let test = "crictl_drives_a_moat_pod_and_a_moat_vm_pod";
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !have_all(
        test,
        &["containerd", "ctr", "docker-registry", "skopeo", "script"],
    ) {
        return;
    }
    let Some(tools) = cri_tools(test) else {
        return;
    };
    // The static guest agent for the VM pod, in containerd's environment (the shims inherit
    // it); SERIAL keeps other tests of this binary from seeing the change.
    std::env::set_var("MOAT_AGENT_BIN", vm_agent_path());
    let env = CriEnv::start(tools, 2);
    crictl::drive_pod(&env, "moat");
    crictl::drive_pod(&env, "moat-vm");
    let sock = env.cd.sock();
    drop(env);
    assert_left_nothing(&sock);
}
