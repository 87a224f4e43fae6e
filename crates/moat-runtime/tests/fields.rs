//! Fields of the runtime spec applied to the container process (`process.scheduler`,
//! `process.ioPriority`, `linux.personality`, `linux.memoryPolicy`) and the recursive mount
//! attributes of runtime-spec 1.1, checked from inside the container; the mount attributes also
//! against runc, which implements them (runc 1.1 has none of the process fields: there the
//! tests assert the spec's values directly). Also the fields runc honours and moat once did not:
//! an empty device list, /proc or /sys through a symlink, user namespaces mapping root to an
//! unprivileged uid, time offsets, ociVersion — each against runc where runc has the field.

mod common;
use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

/// Fields of a `/proc/<pid>/stat` line after the command name: (nice, rt_priority, policy).
fn sched_of(stat_line: &str) -> (i64, i64, i64) {
    let rest = &stat_line[stat_line.rfind(')').expect("stat line") + 2..];
    let f: Vec<i64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // `rest` starts at field 3 (state): field n is f[n - 3].
    (f[19 - 3], f[40 - 3], f[41 - 3])
}

/// Run the bundle expecting create to fail; return stderr.
fn refused(rt: &Rt, b: &Bundle, id: &str) -> String {
    let (code, out, err) = rt.run(b, id);
    assert_ne!(code, 0, "run {id} should have failed\nstdout: {out}");
    assert!(
        err.starts_with("error:") && err.trim_end().lines().count() == 1,
        "one `error:` line expected: {err}"
    );
    assert_clean(rt, id, Some(b.path()));
    err
}

#[test]
fn scheduler_policy_nice_and_reset_on_fork() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.spec["process"]["scheduler"] =
        json!({"policy": "SCHED_BATCH", "nice": -5, "flags": ["SCHED_FLAG_RESET_ON_FORK"]});
    // pid 1 (the shell itself), then a child: with reset-on-fork its negative nice goes back to 0.
    b.sh("read l < /proc/1/stat; echo \"$l\"; cat /proc/self/stat; echo forked");
    let id = id("sched");
    let out = rt.run_ok(&b, &id);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(sched_of(lines[0]), (-5, 0, 3), "pid 1: {out}");
    assert_eq!(sched_of(lines[1]), (0, 0, 3), "child: {out}");
    assert_clean(&rt, &id, Some(b.path()));
}

#[test]
fn scheduler_and_io_priority_apply_to_exec_processes() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["sleep", "1000"]);
    b.spec["process"]["scheduler"] = json!({"policy": "SCHED_IDLE"});
    b.spec["process"]["ioPriority"] = json!({"class": "IOPRIO_CLASS_BE", "priority": 5});
    b.save();
    let id = id("schedexec");
    rt.create(&b, &id);
    rt.ok(&["start", &id]);
    let init = rt.state(&id)["pid"].as_i64().unwrap();
    let host = std::fs::read_to_string(format!("/proc/{init}/stat")).unwrap();
    assert_eq!(
        sched_of(&host),
        (0, 0, 5),
        "init seen from the host: {host}"
    );
    let out = rt.ok(&[
        "exec",
        &id,
        "sh",
        "-c",
        "read l < /proc/self/stat; echo \"$l\"; ionice -p $$",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(sched_of(lines[0]), (0, 0, 5), "exec'd process: {out}");
    assert_eq!(lines[1].trim(), "best-effort: prio 5", "{out}");
    rt.ok(&["delete", "--force", &id]);
    assert_clean(&rt, &id, Some(b.path()));
}

#[test]
fn scheduler_realtime_applies_or_fails_naming_the_field() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.spec["process"]["scheduler"] = json!({"policy": "SCHED_FIFO", "priority": 10});
    b.sh("read l < /proc/1/stat; echo \"$l\"");
    let id = id("fifo");
    let (code, out, err) = rt.run(&b, &id);
    if code == 0 {
        assert_eq!(sched_of(out.lines().next().unwrap()), (0, 10, 1), "{out}");
    } else {
        // A cgroup v1 hierarchy with RT group scheduling gives a new cgroup no real-time budget
        // (runc 1.2 fails the same way): the error must say which field and why.
        assert!(
            err.starts_with("error:")
                && err.contains("process.scheduler")
                && err.contains("SCHED_FIFO"),
            "{err}"
        );
    }
    assert_clean(&rt, &id, Some(b.path()));
}

#[test]
fn scheduler_deadline_with_runtime_deadline_and_period() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.spec["process"]["scheduler"] = json!({"policy": "SCHED_DEADLINE",
        "runtime": 10_000_000u64, "deadline": 20_000_000u64, "period": 30_000_000u64});
    // A deadline task may not fork: read /proc/1/sched with shell builtins only.
    b.sh("while read l; do case \"$l\" in policy*|dl.runtime*) echo \"$l\";; esac; done < /proc/1/sched");
    let id = id("deadline");
    let out = rt.run_ok(&b, &id);
    let val = |k: &str| -> i64 {
        out.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{k} missing: {out}"))
    };
    assert_eq!(val("policy"), 6, "{out}");
    // The runtime left in the current period never exceeds the runtime asked.
    let left = val("dl.runtime");
    assert!(left > 0 && left <= 10_000_000, "{out}");
    assert_clean(&rt, &id, Some(b.path()));
}

#[test]
fn invalid_scheduling_values_are_refused_naming_the_field() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    for (field, value, needle) in [
        (
            "scheduler",
            json!({"policy": "SCHED_FIFO", "priority": 0}),
            "process.scheduler.priority",
        ),
        (
            "scheduler",
            json!({"policy": "SCHED_OTHER", "nice": 42}),
            "process.scheduler.nice",
        ),
        (
            "scheduler",
            json!({"policy": "SCHED_DEADLINE", "runtime": 10, "deadline": 5}),
            "SCHED_DEADLINE",
        ),
        (
            "ioPriority",
            json!({"class": "IOPRIO_CLASS_BE", "priority": 9}),
            "process.ioPriority.priority",
        ),
    ] {
        b.spec["process"][field] = value;
        b.save();
        let id = id("badsched");
        let err = refused(&rt, &b, &id);
        assert!(err.contains(needle), "{needle}: {err}");
        b.spec["process"].as_object_mut().unwrap().remove(field);
    }
}

#[test]
fn io_priority_realtime_class() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.spec["process"]["ioPriority"] = json!({"class": "IOPRIO_CLASS_RT", "priority": 3});
    b.sh("ionice -p 1");
    let id = id("ioprio");
    let out = rt.run_ok(&b, &id);
    assert_eq!(out.trim(), "realtime: prio 3");
    assert_clean(&rt, &id, Some(b.path()));
}

#[test]
fn personality_domain_and_flags() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.spec["linux"]["personality"] = json!({"domain": "LINUX32", "flags": ["ADDR_NO_RANDOMIZE"]});
    b.sh("uname -m; cat /proc/self/personality");
    let id = id("pers");
    let out = rt.run_ok(&b, &id);
    let lines: Vec<&str> = out.lines().collect();
    if cfg!(target_arch = "x86_64") {
        assert_eq!(lines[0], "i686", "{out}");
    }
    assert_eq!(lines[1], "00040008", "{out}");
    assert_clean(&rt, &id, Some(b.path()));

    b.spec["linux"]["personality"] = json!({"domain": "LINUX"});
    b.save();
    let id2 = common::id("pers");
    let out = rt.run_ok(&b, &id2);
    assert_eq!(out.lines().nth(1), Some("00000000"), "{out}");
    assert_eq!(
        out.lines().next(),
        Some(std::env::consts::ARCH),
        "LINUX keeps the machine: {out}"
    );

    b.spec["linux"]["personality"] = json!({"domain": "LINUX", "flags": ["NO_SUCH_FLAG"]});
    b.save();
    let err = refused(&rt, &b, &common::id("pers"));
    assert!(
        err.contains("linux.personality.flags") && err.contains("NO_SUCH_FLAG"),
        "{err}"
    );
}

#[test]
fn memory_policy_reaches_the_process() {
    if !Path::new("/proc/self/numa_maps").exists() {
        eprintln!("SKIP: memory_policy_reaches_the_process: the kernel has no NUMA support");
        return;
    }
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    for (policy, want) in [
        (json!({"mode": "MPOL_BIND", "nodes": "0"}), "bind:0"),
        (
            json!({"mode": "MPOL_INTERLEAVE", "nodes": "0", "flags": ["MPOL_F_STATIC_NODES"]}),
            "interleave=static:0",
        ),
        (json!({"mode": "MPOL_LOCAL"}), "local"),
    ] {
        b.spec["linux"]["memoryPolicy"] = policy.clone();
        // A mapping without a policy of its own shows the task's policy.
        b.sh("head -n 1 /proc/self/numa_maps");
        let id = id("mempol");
        let out = rt.run_ok(&b, &id);
        let shown = out.split_whitespace().nth(1).unwrap_or_default();
        assert_eq!(shown, want, "{policy}: {out}");
        assert_clean(&rt, &id, Some(b.path()));
    }
    b.spec["linux"]["memoryPolicy"] = json!({"mode": "MPOL_BIND"});
    b.save();
    let err = refused(&rt, &b, &id("mempol"));
    assert!(err.contains("linux.memoryPolicy.nodes"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Mount attributes
// ---------------------------------------------------------------------------------------------

/// A host directory with a tmpfs mounted on `sub/` (a submount for the recursive options),
/// unmounted when dropped.
struct HostTree {
    dir: tempfile::TempDir,
}

impl HostTree {
    fn new(sub_opts: &str) -> HostTree {
        let dir = tempfile::Builder::new()
            .prefix("moat-attrs-")
            .tempdir()
            .unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", sub_opts, "attrs-sub"])
            .arg(dir.path().join("sub"))
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs on the host");
        HostTree { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for HostTree {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(
            &self.dir.path().join("sub"),
            nix::mount::MntFlags::MNT_DETACH,
        );
    }
}

/// The per-mount options (field 6 of mountinfo) of each mount point in `out` (a mountinfo dump).
fn mount_opts(out: &str, mnt: &str) -> Vec<String> {
    let line = out
        .lines()
        .rfind(|l| l.split_whitespace().nth(4) == Some(mnt))
        .unwrap_or_else(|| panic!("{mnt} is not mounted:\n{out}"));
    line.split_whitespace()
        .nth(5)
        .unwrap()
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// The atime mode the kernel shows for mount options `o` (strictatime shows as nothing).
fn atime(o: &[String]) -> &'static str {
    match (
        o.iter().any(|x| x == "noatime"),
        o.iter().any(|x| x == "relatime"),
    ) {
        (true, false) => "noatime",
        (false, true) => "relatime",
        (false, false) => "strictatime",
        (true, true) => "noatime+relatime",
    }
}

fn bind(dest: &str, src: &Path, opts: &[&str]) -> Value {
    json!({"destination": dest, "type": "bind", "source": src, "options": opts})
}

/// Each mount point's flags and atime mode, as the container saw them.
fn seen(out: &str, mnts: &[&str]) -> Vec<(String, Vec<String>, &'static str)> {
    mnts.iter()
        .map(|m| {
            let o = mount_opts(out, m);
            let mut flags: Vec<String> = o
                .iter()
                .filter(|x| {
                    [
                        "ro",
                        "nosuid",
                        "nodev",
                        "noexec",
                        "nosymfollow",
                        "nodiratime",
                    ]
                    .contains(&x.as_str())
                })
                .cloned()
                .collect();
            flags.sort();
            (m.to_string(), flags, atime(&o))
        })
        .collect()
}

#[test]
fn recursive_attributes_reach_every_submount_like_runc() {
    // The submount starts noatime: the recursive atime options must replace that mode.
    let tree = HostTree::new("noatime,size=1m");
    let rt = Rt::new();
    let mut b = Bundle::new(&["cat", "/proc/self/mountinfo"]);
    let mounts = b.spec["mounts"].as_array_mut().unwrap();
    let flags = [
        "rbind",
        "rro",
        "rnosuid",
        "rnodev",
        "rnoexec",
        "rnosymfollow",
        "rnodiratime",
    ];
    mounts.push(bind("/flags", tree.path(), &flags));
    mounts.push(bind("/cleared", tree.path(), &["rbind", "rro", "rrw"]));
    b.save();
    let mnts = ["/flags", "/flags/sub", "/cleared", "/cleared/sub"];
    let id = id("rattr");
    let out = rt.run_ok(&b, &id);
    let got = seen(&out, &mnts);
    let all: Vec<String> = [
        "nodev",
        "nodiratime",
        "noexec",
        "nosuid",
        "nosymfollow",
        "ro",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(got[0].1, all, "{got:?}");
    assert_eq!(got[1].1, all, "{got:?}");
    assert!(got[2].1.is_empty() && got[3].1.is_empty(), "{got:?}");
    assert_clean(&rt, &id, Some(b.path()));
    if let Some((code, rout, rerr)) = runc_run(&b, &common::id("rattr-runc")) {
        assert_eq!(code, 0, "runc: {rerr}");
        // runc 1.1 keeps `rro` after a later `rrw` (it sets and clears the bit at once): compare
        // the mounts where it is right.
        assert_eq!(seen(&rout, &mnts[..2]), got[..2], "runc and moat differ");
    }

    // The atime family: each gives exactly the mode asked, on the mount and its submount.
    let mut b = Bundle::new(&["cat", "/proc/self/mountinfo"]);
    let cases = [
        ("rnoatime", "noatime"),
        ("rstrictatime", "strictatime"),
        ("rrelatime", "relatime"),
        ("ratime", "relatime"),
        ("rnostrictatime", "relatime"),
        ("rnorelatime", "strictatime"),
    ];
    let mut mnts = vec![];
    for (opt, _) in cases {
        let dest = format!("/{opt}");
        b.spec["mounts"]
            .as_array_mut()
            .unwrap()
            .push(bind(&dest, tree.path(), &["rbind", opt]));
        mnts.push(dest.clone());
        mnts.push(format!("{dest}/sub"));
    }
    b.save();
    let id = common::id("ratime");
    let out = rt.run_ok(&b, &id);
    let mnts: Vec<&str> = mnts.iter().map(String::as_str).collect();
    let got = seen(&out, &mnts);
    for (i, (opt, want)) in cases.iter().enumerate() {
        assert_eq!(got[2 * i].2, *want, "{opt} on the mount: {got:?}");
        assert_eq!(got[2 * i + 1].2, *want, "{opt} on the submount: {got:?}");
    }
    assert_clean(&rt, &id, Some(b.path()));
}

#[test]
fn recursive_attributes_in_a_user_namespace_and_on_tmpfs() {
    let tree = HostTree::new("size=1m");
    let rt = Rt::new();
    let mut b = Bundle::new(&["cat", "/proc/self/mountinfo"]);
    b.spec["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "user"}));
    b.spec["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    b.spec["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    let st = Command::new("chown")
        .args(["-R", "100000:100000"])
        .arg(b.rootfs())
        .status()
        .unwrap();
    assert!(st.success());
    let mounts = b.spec["mounts"].as_array_mut().unwrap();
    // Host mounts seen from a user namespace have their flags locked: setting more is allowed.
    mounts.push(bind(
        "/flags",
        tree.path(),
        &["rbind", "rro", "rnosuid", "rnodev", "rnoexec"],
    ));
    // A mount made in the container's own namespaces: its atime mode can change too.
    mounts.push(
        json!({"destination": "/t", "type": "tmpfs", "source": "tmpfs",
        "options": ["size=1m", "rro", "rnoexec", "rstrictatime"]}),
    );
    b.save();
    let id = id("rattr-userns");
    let out = rt.run_ok(&b, &id);
    let got = seen(&out, &["/flags", "/flags/sub", "/t"]);
    let want: Vec<String> = ["nodev", "noexec", "nosuid", "ro"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(got[0].1, want, "{got:?}");
    assert_eq!(got[1].1, want, "{got:?}");
    assert!(got[2].1.contains(&"ro".to_string()) && got[2].1.contains(&"noexec".to_string()));
    assert_eq!(got[2].2, "strictatime", "{got:?}");
    assert_clean(&rt, &id, Some(b.path()));
}

#[test]
fn plain_atime_options_on_a_bind_mount_give_the_exact_mode_like_runc() {
    // The source is noatime: a bind mount asking another mode must not keep it.
    let tree = HostTree::new("noatime,size=1m");
    let src = tree.path().join("sub");
    let relatime_src = tree.path();
    let rt = Rt::new();
    let mut b = Bundle::new(&["cat", "/proc/self/mountinfo"]);
    let cases: [(&str, &[&str], &str, bool); 4] = [
        ("/noatime", &["bind", "noatime"], "noatime", false),
        (
            "/strictatime",
            &["bind", "strictatime"],
            "strictatime",
            false,
        ),
        ("/relatime", &["bind", "relatime"], "relatime", false),
        ("/nodiratime", &["bind", "nodiratime"], "relatime", true),
    ];
    for (dest, opts, _, _) in cases {
        // nodiratime asks no atime mode: runc then gets the kernel's default (relatime), moat
        // keeps the source's; from a relatime source both give relatime.
        let src = if *dest == *"/nodiratime" {
            relatime_src
        } else {
            &src
        };
        b.spec["mounts"]
            .as_array_mut()
            .unwrap()
            .push(bind(dest, src, opts));
    }
    b.save();
    let mnts: Vec<&str> = cases.iter().map(|c| c.0).collect();
    let id = id("atime");
    let out = rt.run_ok(&b, &id);
    let got = seen(&out, &mnts);
    for (i, (dest, _, mode, nodiratime)) in cases.iter().enumerate() {
        assert_eq!(got[i].2, *mode, "{dest}: {got:?}");
        assert_eq!(
            got[i].1.contains(&"nodiratime".to_string()),
            *nodiratime,
            "{dest}: {got:?}"
        );
    }
    assert_clean(&rt, &id, Some(b.path()));
    if let Some((code, rout, rerr)) = runc_run(&b, &common::id("atime-runc")) {
        assert_eq!(code, 0, "runc: {rerr}");
        assert_eq!(seen(&rout, &mnts), got, "runc and moat differ");
    }
}

#[test]
fn features_list_the_new_fields_and_recursive_options() {
    let rt = Rt::new();
    let v: Value = serde_json::from_str(&rt.ok(&["features"])).unwrap();
    let opts: Vec<&str> = v["mountOptions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for o in [
        "rro",
        "rrw",
        "rnosuid",
        "rsuid",
        "rnodev",
        "rdev",
        "rnoexec",
        "rexec",
        "rnosymfollow",
        "rsymfollow",
        "rnoatime",
        "rstrictatime",
        "rnodiratime",
        "rdiratime",
        "ratime",
        "rnostrictatime",
        "rrelatime",
        "rnorelatime",
    ] {
        assert!(opts.contains(&o), "{o} missing from {opts:?}");
    }
    let linux = &v["linux"];
    assert_eq!(linux["scheduler"]["enabled"], true);
    assert!(linux["scheduler"]["policies"]
        .as_array()
        .unwrap()
        .contains(&json!("SCHED_DEADLINE")));
    assert_eq!(linux["ioPriority"]["enabled"], true);
    assert_eq!(linux["personality"]["domains"], json!(["LINUX", "LINUX32"]));
    assert!(linux["memoryPolicy"]["modes"]
        .as_array()
        .unwrap()
        .contains(&json!("MPOL_BIND")));
}

/// `linux.resources.devices: []` is "no rules beyond the defaults", like an absent list: the
/// standard devices work, any other device is denied (runc appends its defaults to deny-all).
#[test]
fn an_empty_or_absent_device_list_keeps_the_default_devices() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.sh(concat!(
        "echo x > /dev/null && head -c 4 /dev/zero | wc -c && head -c 4 /dev/urandom | wc -c; ",
        "rm -f /tmp/sda; mknod /tmp/sda b 8 0 && (head -c 1 /tmp/sda >/dev/null 2>&1 && echo sda=open || echo sda=denied)"
    ));
    for devices in [Some(json!([])), None] {
        match &devices {
            Some(d) => b.spec["linux"]["resources"]["devices"] = d.clone(),
            None => {
                b.spec["linux"]["resources"]
                    .as_object_mut()
                    .unwrap()
                    .remove("devices");
            }
        }
        b.save();
        let out = rt.run_ok(&b, &id("devempty"));
        assert_eq!(out, "4\n4\nsda=denied\n", "devices {devices:?}");
        if let Some((code, rout, rerr)) = runc_run(&b, &id("devempty-runc")) {
            assert_eq!((code, rout.as_str()), (0, out.as_str()), "runc: {rerr}");
        }
    }
    // linux.devices entries stay usable whatever the list holds.
    b.spec["linux"]["resources"]["devices"] = json!([{"allow": false, "access": "rwm"}]);
    b.spec["linux"]["devices"] =
        json!([{"path": "/dev/loopctl", "type": "c", "major": 1, "minor": 3}]);
    b.sh("echo x > /dev/loopctl && echo x > /dev/null && echo ok");
    assert_eq!(rt.run_ok(&b, &id("devlist")), "ok\n");
}

/// A rootfs whose /proc (or /sys) is a symlink is refused at create ("must be mounted on
/// ordinary directory", as runc says), and nothing is left behind.
#[test]
fn proc_or_sys_through_a_symlink_is_refused() {
    let rt = Rt::new();
    for dir in ["proc", "sys"] {
        let b = Bundle::new(&["true"]);
        let root = b.rootfs();
        std::fs::remove_dir(root.join(dir)).unwrap();
        std::fs::create_dir(root.join("elsewhere")).unwrap();
        std::os::unix::fs::symlink("elsewhere", root.join(dir)).unwrap();
        let id = id("procsym");
        let o = rt.create_out(&b, &id, &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "/{dir} symlink accepted");
        assert!(
            err.starts_with("error:") && err.contains("must be mounted on ordinary directory"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        assert_clean(&rt, &id, Some(b.path()));
        if let Some((code, _, rerr)) = runc_run(&b, &id) {
            assert_ne!(code, 0, "runc accepted a /{dir} symlink");
            assert!(
                rerr.contains("must be mounted on ordinary directory"),
                "{rerr}"
            );
        }
    }
}

/// Container root mapped to an unprivileged host uid: create works (the exec fifo is opened by
/// the runtime, not reached by the init through the runtime's private state directory), as with
/// runc; and a time namespace's offsets are written inside such a user namespace.
#[test]
fn user_namespace_with_unprivileged_root_and_time_offsets() {
    use std::os::unix::fs::PermissionsExt;
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    // The unprivileged root must be able to reach the rootfs, as with runc.
    std::fs::set_permissions(b.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    b.spec["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "user"}));
    let map = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    b.spec["linux"]["uidMappings"] = map.clone();
    b.spec["linux"]["gidMappings"] = map;
    b.sh("id -u; cat /proc/self/uid_map; stat -c %u /proc/1");
    let out = rt.run_ok(&b, &id("userns"));
    let want = "0\n         0     100000      65536\n0\n";
    assert_eq!(out, want);
    if let Some((code, rout, rerr)) = runc_run(&b, &id("userns-runc")) {
        assert_eq!((code, rout.as_str()), (0, want), "runc: {rerr}");
    }
    // Time namespace (runc 1.1 has none): boottime moved two days ahead, monotonic one.
    b.spec["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "time"}));
    b.spec["linux"]["timeOffsets"] = json!({
        "boottime": {"secs": 172800, "nanosecs": 0},
        "monotonic": {"secs": 86400, "nanosecs": 0}
    });
    b.sh("cut -d. -f1 /proc/uptime");
    let host_up: u64 = std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let up: u64 = rt.run_ok(&b, &id("timens")).trim().parse().unwrap();
    assert!(
        (host_up + 172800..host_up + 172800 + 60).contains(&up),
        "uptime {up} in the container, {host_up} on the host"
    );
}

/// `ociVersion` must be a version moat implements: garbage and other majors are refused at
/// create with the field named, and nothing is left behind.
#[test]
fn unsupported_oci_versions_are_refused_at_create() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    for (v, why) in [
        ("banana", "not a semantic version"),
        ("2.0.0", "not supported"),
        ("0.6.0", "not supported"),
    ] {
        b.spec["ociVersion"] = json!(v);
        b.save();
        let id = id("ociver");
        let o = rt.create_out(&b, &id, &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{v} accepted");
        assert!(
            err.starts_with("error:") && err.contains("ociVersion") && err.contains(why),
            "{v}: {err}"
        );
        assert_clean(&rt, &id, Some(b.path()));
    }
    for v in ["1.0.2-dev", "1.1.0", "1.2.0"] {
        b.spec["ociVersion"] = json!(v);
        b.save();
        rt.run_ok(&b, &id("ociver"));
    }
}
