//! Tests on the real cgroup hierarchies of the host (hybrid or pure v2). They need root and are
//! skipped (with a message) otherwise. Every test cgroup is named `moat-test-*` and removed by a
//! drop guard even when an assertion fails.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use super::res;
use crate::v1::V1Dirs;
use crate::{layout, Cgroup, Layout, ROOT};

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("moat-test-{prefix}-{}-{nanos}", std::process::id())
}

fn can_run() -> bool {
    let root = moat_sys::nix::unistd::geteuid().is_root();
    if !root || !Path::new(ROOT).is_dir() {
        eprintln!("skipped: needs root and {ROOT}");
    }
    root && Path::new(ROOT).is_dir()
}

/// The root of a cgroup2 hierarchy: /sys/fs/cgroup on pure v2, the unified mount when hybrid.
fn unified_root() -> Option<PathBuf> {
    match layout().ok()? {
        Layout::V2 => Some(ROOT.into()),
        Layout::V1 => {
            let u = Path::new(ROOT).join("unified");
            u.join("cgroup.controllers").exists().then_some(u)
        }
    }
}

/// Kills the test's children and removes the cgroup, whatever happened.
struct Guard {
    cg: Cgroup,
    children: Vec<Child>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.cg.thaw();
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self.cg.destroy();
    }
}

fn busy() -> Child {
    Command::new("sh")
        .args(["-c", "while :; do :; done"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

fn sleeper() -> Child {
    Command::new("sleep")
        .arg("100")
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

fn file(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name))
        .unwrap()
        .trim()
        .to_owned()
}

/// CPU time must not grow while frozen and must grow again once thawed.
fn check_freeze(cg: &Cgroup, cpu_ns: impl Fn() -> u64) {
    std::thread::sleep(Duration::from_millis(100));
    cg.freeze().unwrap();
    assert!(cg.is_frozen().unwrap());
    let t1 = cpu_ns();
    std::thread::sleep(Duration::from_millis(300));
    let t2 = cpu_ns();
    assert_eq!(t1, t2, "cpu time grew while frozen");
    cg.thaw().unwrap();
    assert!(!cg.is_frozen().unwrap());
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        cpu_ns() > t2 + 50_000_000,
        "cpu time did not grow after thaw"
    );
}

#[test]
fn host_v1_hybrid_lifecycle() {
    if !can_run() || layout().ok() != Some(Layout::V1) {
        eprintln!("skipped: not a v1/hybrid host");
        return;
    }
    let cg = Cgroup::resolve(Some(&format!("/{}", unique("v1"))), "x", false).unwrap();
    let mut g = Guard {
        cg: cg.clone(),
        children: Vec::new(),
    };
    cg.create().unwrap();
    let dirs = V1Dirs::from_dirs(&cg.dirs());
    let mem = dirs.get("memory").unwrap().to_path_buf();
    let memsw = mem.join("memory.memsw.limit_in_bytes").exists();
    let mib = 1i64 << 20;
    let mut r = json!({
        "memory": {"limit": 64 * mib},
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0"},
        "pids": {"limit": 50},
        "devices": [
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 5, "access": "r"},
        ],
    });
    if memsw {
        r["memory"]["swap"] = (128 * mib).into();
    }
    let huge_unified = dirs
        .unified()
        .is_some_and(|u| u.join("hugetlb.2MB.max").exists());
    if dirs.get("hugetlb").is_some() || huge_unified {
        r["hugepageLimits"] = json!([{"pageSize": "2MB", "limit": 4 * mib}]);
    }
    cg.apply(&res(r)).unwrap();
    assert_eq!(file(&mem, "memory.limit_in_bytes"), (64 * mib).to_string());
    let cpu = dirs.get("cpu").unwrap();
    assert_eq!(file(cpu, "cpu.shares"), "512");
    assert_eq!(file(cpu, "cpu.cfs_quota_us"), "50000");
    assert_eq!(file(dirs.get("cpuset").unwrap(), "cpuset.cpus"), "0");
    assert_eq!(file(dirs.get("pids").unwrap(), "pids.max"), "50");
    let list = file(dirs.get("devices").unwrap(), "devices.list");
    assert_eq!(list, "c 1:3 rwm\nc 1:5 r");
    if huge_unified {
        assert_eq!(
            file(dirs.unified().unwrap(), "hugetlb.2MB.max"),
            (4 * mib).to_string()
        );
    }
    if memsw {
        // Lowering then raising memory and memory+swap: the kernel refuses a wrong order.
        cg.update(&res(
            json!({"memory": {"limit": 32 * mib, "swap": 32 * mib}}),
        ))
        .unwrap();
        assert_eq!(
            file(&mem, "memory.memsw.limit_in_bytes"),
            (32 * mib).to_string()
        );
        cg.update(&res(
            json!({"memory": {"limit": 256 * mib, "swap": 512 * mib}}),
        ))
        .unwrap();
        assert_eq!(file(&mem, "memory.limit_in_bytes"), (256 * mib).to_string());
        assert_eq!(
            file(&mem, "memory.memsw.limit_in_bytes"),
            (512 * mib).to_string()
        );
    } else {
        let e = cg.update(&res(
            json!({"memory": {"limit": 32 * mib, "swap": 64 * mib}}),
        ));
        assert!(e
            .unwrap_err()
            .to_string()
            .contains("swap accounting is off"));
    }
    // A value the kernel refuses names the field and the file.
    let e = cg
        .update(&res(json!({"cpu": {"cpus": "9999"}})))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("linux.resources.cpu.cpus: write \"9999\" to ") && e.contains("cpuset.cpus"),
        "{e}"
    );

    g.children.push(sleeper());
    g.children.push(busy());
    for c in &g.children {
        cg.add_pid(c.id() as i32).unwrap();
    }
    let mut want: Vec<i32> = g.children.iter().map(|c| c.id() as i32).collect();
    want.sort_unstable();
    assert_eq!(cg.pids().unwrap(), want);
    check_freeze(&cg, || cg.stats().unwrap().cpu.usage.total);
    let s = cg.stats().unwrap();
    assert_eq!(s.pids.current, 2);
    assert_eq!(s.pids.limit, 50);
    assert_eq!(
        s.memory.usage.limit,
        256 * (1 << 20) * u64::from(memsw) + 64 * (1 << 20) * u64::from(!memsw)
    );
    assert_eq!(cg.oom_kill_count().unwrap(), 0);

    cg.kill_all(libc::SIGKILL).unwrap();
    for c in &mut g.children {
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(c.wait().unwrap().signal(), Some(libc::SIGKILL));
    }
    cg.destroy().unwrap();
    for d in cg.dirs() {
        assert!(!d.exists(), "{} left behind", d.display());
    }
}

#[test]
fn host_v2_freeze_kill_destroy() {
    if !can_run() {
        return;
    }
    let Some(root) = unified_root() else {
        eprintln!("skipped: no cgroup2 hierarchy");
        return;
    };
    let dir = root.join(unique("v2"));
    let cg = Cgroup::V2 { dir: dir.clone() };
    let mut g = Guard {
        cg: cg.clone(),
        children: Vec::new(),
    };
    cg.create().unwrap();
    if dir.join("pids.max").exists() {
        cg.apply(&res(json!({"pids": {"limit": 20}}))).unwrap();
        assert_eq!(file(&dir, "pids.max"), "20");
    }
    if dir.join("hugetlb.2MB.max").exists() {
        cg.apply(&res(
            json!({"hugepageLimits": [{"pageSize": "2MB", "limit": -1}]}),
        ))
        .unwrap();
        assert_eq!(file(&dir, "hugetlb.2MB.max"), "max");
    }
    g.children.push(busy());
    cg.add_pid(g.children[0].id() as i32).unwrap();
    check_freeze(&cg, || cg.stats().unwrap().cpu.usage.total);
    // A nested cgroup with a live process: destroy must kill it and remove both levels.
    let sub = dir.join("nested");
    std::fs::create_dir(&sub).unwrap();
    g.children.push(sleeper());
    crate::write(&sub.join("cgroup.procs"), &g.children[1].id().to_string()).unwrap();
    assert_eq!(cg.pids().unwrap().len(), 2);
    cg.destroy().unwrap();
    assert!(!dir.exists());
    for c in &mut g.children {
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(c.wait().unwrap().signal(), Some(libc::SIGKILL));
    }
}

/// Runs `sh -c script` inside `cg` (moved in before it reads its go signal).
fn run_inside(cg: &Cgroup, script: &str) -> (String, String) {
    let mut child = Command::new("sh")
        .args(["-c", &format!("read go; {script}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let moved = cg.add_pid(pid);
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let out = child.wait_with_output().unwrap();
    moved.unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn host_v2_device_program() {
    if !can_run() {
        return;
    }
    let Some(root) = unified_root() else {
        eprintln!("skipped: no cgroup2 hierarchy");
        return;
    };
    let dir = root.join(unique("dev"));
    let cg = Cgroup::V2 { dir: dir.clone() };
    let _g = Guard {
        cg: cg.clone(),
        children: Vec::new(),
    };
    cg.create().unwrap();
    let allow_zero = json!({"devices": [
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 5, "access": "rwm"},
    ]});
    cg.apply(&res(allow_zero)).unwrap();
    let script = "head -c 3 /dev/zero | wc -c; cat /dev/null; echo null=$?";
    let (out, err) = run_inside(&cg, script);
    assert!(
        out.starts_with("3\n"),
        "/dev/zero must be readable: {out:?} {err:?}"
    );
    assert!(out.contains("null=1"), "/dev/null must be refused: {out:?}");
    assert!(err.contains("Operation not permitted"), "{err:?}");

    // An update replaces the program rather than stacking a second one.
    let both = json!({"devices": [
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 5, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "r"},
    ]});
    cg.update(&res(both)).unwrap();
    let f: std::os::fd::OwnedFd = std::fs::File::open(&dir).unwrap().into();
    use std::os::fd::AsFd as _;
    let ids = moat_sys::bpf::prog_query(f.as_fd(), moat_sys::bpf::ATTACH_CGROUP_DEVICE).unwrap();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let (out, err) = run_inside(
        &cg,
        "cat /dev/null; echo null=$?; echo x > /dev/null; echo w=$?",
    );
    assert!(out.contains("null=0"), "{out:?} {err:?}");
    assert!(
        out.contains("w=2") || out.contains("w=1"),
        "write stays denied: {out:?}"
    );
}

/// An OOM kill in a watched cgroup makes [`crate::oom::OomWatch`]'s descriptor readable (an
/// eventfd on v1, inotify on v2) and is counted once; nothing is read while nothing happens.
#[test]
fn host_oom_watch_wakes_on_an_oom_kill() {
    use crate::oom::OomWatch;
    use moat_sys::nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    if !can_run() {
        return;
    }
    let cg = Cgroup::resolve(Some(&format!("/{}", unique("oom"))), "x", false).unwrap();
    let _g = Guard {
        cg: cg.clone(),
        children: Vec::new(),
    };
    cg.create().unwrap();
    let limit = 16i64 << 20;
    let mut r = json!({"memory": {"limit": limit}});
    if let Cgroup::V1 { dirs } = &cg {
        let v1 = V1Dirs::from_dirs(dirs);
        if v1
            .get("memory")
            .is_some_and(|m| m.join("memory.memsw.limit_in_bytes").exists())
        {
            r["memory"]["swap"] = limit.into();
        }
    }
    cg.apply(&res(r)).unwrap();
    let mut w = OomWatch::new();
    w.add("c", cg.clone(), None);
    assert!(w.events_fd().is_some(), "the cgroup is polled, not watched");
    let ready = |w: &OomWatch, ms: u16| {
        let fd = w.events_fd().expect("a descriptor to poll");
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::from(ms)).unwrap() == 1
    };
    assert!(!ready(&w, 200), "readable before any OOM kill");
    let (_, err) = run_inside(&cg, "x=0123456789; while :; do x=$x$x; done");
    eprintln!("hog: {err}");
    assert!(ready(&w, 5000), "no wake-up after an OOM kill");
    w.drain_events();
    assert_eq!(w.grown(true), vec![("c".to_string(), 1)]);
    assert_eq!(w.grown(true), vec![]);
    w.remove("c");
    assert!(w.events_fd().is_none());
}
