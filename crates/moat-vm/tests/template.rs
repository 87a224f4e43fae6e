//! VM templates end to end (root only; TCG here): the first VM of a shape builds a template,
//! later ones are clones resumed from it; a clone runs a container (exit code, output, its
//! disk), clones are unique (boot id, random numbers, machine id) with the right clock, a stale
//! template (a changed initramfs) is rebuilt and removed, and a broken one (written after its build) is
//! refused, removed and leaves the way to a cold boot open.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use moat_agent_proto::{ExitStatus, RootfsDisk};
use moat_vm::qemu::{Qemu, QemuVm};
use moat_vm::template::{self, DISK_BYTES};
use moat_vm::{Disk, Hypervisor, VmConfig, VmInstance};

mod common;
use common::{assets, busybox_disk, config, is_root};

fn cfg_with(initramfs: &Path, disk: &Path) -> VmConfig {
    let a = assets();
    let mut cfg = VmConfig::new(a.kernel.vmlinuz.clone(), initramfs.to_path_buf());
    cfg.disks.push(Disk {
        path: disk.to_path_buf(),
        serial: "rootfs0".into(),
        readonly: true,
    });
    cfg.template = true;
    cfg
}

fn clone_in(cfg: &VmConfig, store: &Path) -> (QemuVm, Duration) {
    let t = Instant::now();
    let vm = template::boot_clone_in(&Qemu::new(assets().accel), cfg, store)
        .unwrap_or_else(|e| panic!("clone: {e}"))
        .expect("this shape can be templated");
    (vm, t.elapsed())
}

fn templates(store: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(store)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Run a container printing what must differ between clones; returns its lines.
fn probe(vm: &mut QemuVm, id: &str) -> Vec<String> {
    let agent = vm.agent().unwrap();
    let disk = RootfsDisk {
        serial: "rootfs0".into(),
        fstype: "ext4".into(),
        readonly: true,
        overlay: false,
    };
    let script = "cat /proc/sys/kernel/random/boot_id; cat /proc/sys/kernel/random/uuid; \
                  date +%s; echo to-stderr >&2; exit 7";
    agent
        .create(id, &config(&["sh", "-c", script]), disk)
        .unwrap_or_else(|e| panic!("create {id}: {e}"));
    agent.start(id).unwrap();
    let out = agent
        .wait_exit(id, None, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("wait {id}: {e}"));
    assert_eq!(out.status, ExitStatus::Code(7), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "to-stderr\n");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn clones_run_containers_are_unique_and_stale_or_broken_templates_are_handled() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("templates");
    let img = busybox_disk(tmp.path());
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(DISK_BYTES)
        .unwrap();
    // A copy of the initramfs: touching it makes the template stale.
    let initramfs = tmp.path().join("initramfs.cpio");
    std::fs::copy(&assets().initramfs, &initramfs).unwrap();
    let cfg = cfg_with(&initramfs, &img);
    assert_eq!(template::unsupported(&cfg), None);

    // The first VM builds the template, the next ones are clones of it.
    let (mut a, first) = clone_in(&cfg, &store);
    assert_eq!(templates(&store).len(), 1, "one template built");
    let (mut b, second) = clone_in(&cfg, &store);
    eprintln!("build + clone: {first:?}; clone: {second:?}");
    assert!(
        second < first,
        "a clone ({second:?}) is faster than a build ({first:?})"
    );
    let host_now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let pa = probe(&mut a, "ca");
    let pb = probe(&mut b, "cb");
    eprintln!("clone a: {pa:?}\nclone b: {pb:?}");
    assert_eq!(pa.len(), 3, "{pa:?}");
    assert_ne!(pa[0], pb[0], "boot ids");
    assert_ne!(pa[1], pb[1], "random uuids");
    for p in [&pa, &pb] {
        let guest_now: i64 = p[2].parse().unwrap();
        assert!(
            (guest_now - host_now).abs() < 60,
            "guest clock {guest_now}, host {host_now}"
        );
    }
    // Clones do not share the template's file for writing: it is mapped private.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", a.pid())).unwrap();
    let tpl = &templates(&store)[0];
    let memory_line = maps
        .lines()
        .find(|l| l.ends_with(&tpl.join("memory").display().to_string()))
        .unwrap_or_else(|| panic!("the template's memory is not mapped:\n{maps}"));
    assert!(
        memory_line
            .split_whitespace()
            .nth(1)
            .unwrap()
            .ends_with('p'),
        "{memory_line}"
    );
    for mut vm in [a, b] {
        vm.stop(Duration::from_secs(10)).unwrap();
    }

    // A changed initramfs (a new agent) makes a new template, and the old one, which no VM can
    // be a clone of any more, is removed while the new one is built.
    let old = templates(&store);
    assert_eq!(old.len(), 1);
    let f = std::fs::OpenOptions::new()
        .append(true)
        .open(&initramfs)
        .unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    drop(f);
    let (mut c, _) = clone_in(&cfg, &store);
    let now = templates(&store);
    assert_eq!(now.len(), 1, "only the new template is left: {now:?}");
    assert_ne!(now, old, "a new template for the new initramfs");
    assert_eq!(probe(&mut c, "cc").len(), 3);
    c.stop(Duration::from_secs(10)).unwrap();

    // A template written after its build (what a QEMU taken over by its guest could do through
    // the read-write descriptor QEMU 7.2 keeps of the memory file; a corrupted state file the
    // same) is refused with its path, removed, and a cold boot still works.
    let key = template::key(&Qemu::new(assets().accel), &cfg);
    let dir = store.join(&key);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("memory"))
            .unwrap();
        f.write_all_at(&[0xcc], 0x10_0000).unwrap();
    }
    let e = template::boot_clone_in(&Qemu::new(assets().accel), &cfg, &store)
        .err()
        .expect("a broken template is refused");
    let msg = e.to_string();
    assert!(
        msg.contains(&key) && msg.contains("changed after it was built"),
        "{msg}"
    );
    eprintln!("broken template: {msg}");
    assert!(!dir.exists(), "the broken template was removed");
    let mut cold = cfg.clone();
    cold.template = false;
    let mut d = Qemu::new(assets().accel).boot(&cold).unwrap();
    assert_eq!(probe(&mut d, "cd").len(), 3);
    d.stop(Duration::from_secs(10)).unwrap();
}
