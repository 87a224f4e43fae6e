//! Regression tests for the runtime CVEs: CVE-2019-5736 (overwriting the runtime binary through
//! /proc/PID/exe), CVE-2024-21626 (leaked descriptors as working directory), CVE-2021-30465
//! (symlink races on mount targets).

mod common;
use common::*;
use serde_json::json;

fn sha256(path: &str) -> String {
    let o = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// CVE-2019-5736: while the runtime's code runs in the container (the init before exec), its
/// executable is not a writable path to the host's binary: it is the binary seen through a
/// private read-only overlayfs (or, where that is impossible, a sealed memfd copy). Opening it for
/// writing fails, and executing /proc/self/exe from inside leaves the host file unchanged.
#[test]
fn cve_2019_5736_runtime_binary_is_a_sealed_copy() {
    let rt = Rt::new();
    let before = sha256(BIN);
    let b = Bundle::new(&["true"]);
    let id = id("cve5736");
    rt.create(&b, &id);
    let pid = rt.state(&id)["pid"].as_i64().unwrap();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let host = std::fs::canonicalize(BIN).unwrap();
    assert_ne!(exe, host, "the container init runs from the host's binary");
    let fs = std::process::Command::new("stat")
        .args(["-f", "-L", "-c", "%T"])
        .arg(format!("/proc/{pid}/exe"))
        .output()
        .unwrap();
    let fs = String::from_utf8_lossy(&fs.stdout).trim().to_owned();
    assert!(
        exe.to_string_lossy().starts_with("/memfd:moat-runtime") || fs == "overlayfs",
        "init runs from {} on {fs}",
        exe.display()
    );
    let w = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/exe"));
    assert!(
        w.is_err(),
        "the runtime executable of a container init could be opened for writing"
    );
    rt.ok(&["delete", "--force", &id]);

    // The attack's first step: the container executes /proc/self/exe while the runtime is in it.
    let mut b2 = Bundle::new(&["/proc/self/exe", "--version"]);
    // The runtime is dynamically linked: give the container the host's libraries, read-only.
    for dir in ["/lib", "/lib64", "/usr"] {
        let meta = match std::fs::symlink_metadata(dir) {
            Ok(m) => m,
            Err(_) => continue,
        };
        if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(
                std::fs::read_link(dir).unwrap(),
                b2.rootfs().join(&dir[1..]),
            )
            .unwrap();
        } else {
            b2.spec["mounts"].as_array_mut().unwrap().push(json!({"destination": dir, "type": "bind", "source": dir, "options": ["rbind", "ro"]}));
        }
    }
    b2.args(&["/proc/self/exe", "--version"]);
    let out = rt.run_ok(&b2, &common::id("cve5736b"));
    assert!(out.starts_with("moat-runtime"), "{out}");
    assert_eq!(sha256(BIN), before, "the host runtime binary changed");
}

/// CVE-2019-5736, the fallback: where the binary's directory cannot be an overlayfs layer (here a
/// ':' in its name, the layer separator), the init runs from a sealed memfd copy instead.
#[test]
fn cve_2019_5736_memfd_fallback_when_no_overlay() {
    let rt = Rt::new();
    let dir = tempfile::Builder::new()
        .prefix("moat-bin:")
        .tempdir()
        .unwrap();
    let bin = dir.path().join("moat-runtime");
    std::fs::copy(BIN, &bin).unwrap();
    let b = Bundle::new(&["true"]);
    let id = id("cve5736mfd");
    let st = std::process::Command::new(&bin)
        .arg("--root")
        .arg(rt.root.path())
        .args(["create", "--bundle"])
        .arg(b.path())
        .arg(&id)
        .status()
        .unwrap();
    assert!(st.success());
    let pid = rt.state(&id)["pid"].as_i64().unwrap();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert!(
        exe.to_string_lossy().starts_with("/memfd:moat-runtime"),
        "init runs from {}",
        exe.display()
    );
    let w = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/exe"));
    assert!(w.is_err(), "the sealed copy could be opened for writing");
    rt.ok(&["delete", "--force", &id]);
}

/// CVE-2024-21626: a working directory through a leaked descriptor must not give the container a
/// handle on the host's filesystem; no runtime descriptor is open in the container.
#[test]
fn cve_2024_21626_no_leaked_fds_and_cwd_stays_inside() {
    let rt = Rt::new();
    for n in 3..=9 {
        let mut b = Bundle::new(&["true"]);
        b.spec["process"]["cwd"] = json!(format!("/proc/self/fd/{n}"));
        b.sh("ls -a . | head -50; echo cwd=$(pwd)");
        let id = id("cve21626");
        let (code, out, err) = rt.run(&b, &id);
        if code == 0 {
            // It ran: then its working directory must be inside the container's root.
            assert!(
                !out.contains("moat-root")
                    && !out.contains("state.json")
                    && !out.contains("cgroup.procs"),
                "fd {n}: host directory visible: {out}"
            );
        } else {
            assert!(
                err.starts_with("error: ") && err.contains("working directory"),
                "fd {n}: {err}"
            );
        }
        assert_clean(&rt, &id, Some(b.path()));
    }
    let mut b = Bundle::new(&["true"]);
    b.sh("ls /proc/self/fd | sort -n | tr '\\n' ' '");
    let out = rt.run_ok(&b, &id("fds"));
    assert_eq!(
        out.trim(),
        "0 1 2 3",
        "descriptors open in the container (3 is ls's own)"
    );
}

/// CVE-2021-30465: a directory in the rootfs is swapped with a symlink to a host directory while
/// containers with a mount on it are being created. The mount must never land on the host.
#[test]
fn cve_2021_30465_symlink_swap_race_stays_inside() {
    let rt = Rt::new();
    let host = tempfile::tempdir().unwrap();
    let mut b = Bundle::new(&["true"]);
    let race = b.rootfs().join("race");
    let link = b.rootfs().join("race-link");
    std::fs::create_dir_all(race.join("mnt")).unwrap();
    std::os::unix::fs::symlink(host.path(), &link).unwrap();
    b.spec["mounts"].as_array_mut().unwrap().push(json!({"destination": "/race/mnt", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m"]}));
    b.sh("touch /race/mnt/written-by-container 2>/dev/null; true");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let stop = stop.clone();
        let (race, link) = (race.clone(), link.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = nix::fcntl::renameat2(
                    None,
                    &race,
                    None,
                    &link,
                    nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                );
                n += 1;
            }
            n
        })
    };
    for i in 0..30 {
        let id = format!("race-{}-{i}", std::process::id());
        let _ = rt.run(&b, &id);
        let _ = rt.out(&["delete", "--force", &id]);
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(&*host.path().to_string_lossy()),
            "a mount landed on the host directory"
        );
        assert_eq!(
            std::fs::read_dir(host.path()).unwrap().count(),
            0,
            "the container wrote into the host directory"
        );
        assert_clean(&rt, &id, Some(b.path()));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(swapper.join().unwrap() > 100, "the swapper did not run");
}
