//! Namespaces: each one is new (or joined by path) as the spec says, as seen from inside.

mod common;
use common::*;
use serde_json::json;

fn host_ns(kind: &str) -> String {
    std::fs::read_link(format!("/proc/self/ns/{kind}"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn every_namespace_is_new() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.spec["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "time"}));
    b.sh("echo pid=$$; for n in pid net ipc uts mnt cgroup time; do echo $n=$(readlink /proc/self/ns/$n); done; cat /proc/self/cgroup; ip link 2>/dev/null | grep -c '^[0-9]' || ls /sys/class/net");
    let out = rt.run_ok(&b, &id("ns"));
    assert!(out.contains("pid=1\n"), "{out}");
    for n in ["pid", "net", "ipc", "uts", "mnt", "cgroup", "time"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{n}=")))
            .unwrap();
        assert_ne!(
            line.split_once('=').unwrap().1,
            host_ns(n),
            "{n} namespace is the host's"
        );
    }
    // In its own cgroup namespace the container sees itself at the root.
    for l in out.lines().filter(|l| l.contains(":/")) {
        if l.starts_with(|c: char| c.is_ascii_digit()) && l.split(':').count() == 3 {
            assert!(
                l.ends_with(":/"),
                "cgroup line {l} does not show the namespace root"
            );
        }
    }
}

#[test]
fn without_a_namespace_the_host_one_is_shared() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    let ns = b.spec["linux"]["namespaces"].as_array_mut().unwrap();
    ns.retain(|n| n["type"] != "network");
    b.sh("readlink /proc/self/ns/net");
    let out = rt.run_ok(&b, &id("hostnet"));
    assert_eq!(out.trim(), host_ns("net"));
}

#[test]
fn hostname_and_domainname() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.spec["hostname"] = json!("inside-moat");
    b.spec["domainname"] = json!("example.test");
    b.sh("hostname; cat /proc/sys/kernel/domainname");
    let out = rt.run_ok(&b, &id("uts"));
    assert_eq!(out, "inside-moat\nexample.test\n");
    assert_ne!(
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim(),
        "inside-moat"
    );
}

#[test]
fn user_namespace_with_mappings() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.spec["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "user"}));
    b.spec["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    b.spec["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    // The rootfs must be owned by the mapped root to be usable.
    let st = std::process::Command::new("chown")
        .args(["-R", "100000:100000"])
        .arg(b.rootfs())
        .status()
        .unwrap();
    assert!(st.success());
    b.sh("cat /proc/self/uid_map /proc/self/gid_map; id -u; touch /tmp/owned");
    let out = rt.run_ok(&b, &id("userns"));
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(
        &words[..7],
        &["0", "100000", "65536", "0", "100000", "65536", "0"],
        "{out}"
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(b.rootfs().join("tmp/owned"))
            .unwrap()
            .uid(),
        100000
    );
}

#[test]
fn time_namespace_offsets() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.spec["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "time"}));
    b.spec["linux"]["timeOffsets"] =
        json!({"boottime": {"secs": 864000, "nanosecs": 0}, "monotonic": {"secs": 86400}});
    b.sh("cut -d. -f1 /proc/uptime");
    let out = rt.run_ok(&b, &id("timens"));
    let inside: u64 = out.trim().parse().unwrap();
    let host: f64 = std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        inside as f64 >= host + 864000.0 - 5.0,
        "uptime inside {inside} vs host {host}"
    );
}

#[test]
fn join_namespaces_of_another_container_by_path() {
    let rt = Rt::new();
    let mut a = Bundle::new(&["sleep", "1000"]);
    a.spec["hostname"] = json!("container-a");
    a.save();
    let ida = id("nsa");
    rt.create(&a, &ida);
    let pid = rt.state(&ida)["pid"].as_i64().unwrap();
    let mut b = Bundle::new(&["true"]);
    b.spec.as_object_mut().unwrap().remove("hostname");
    let ns = b.spec["linux"]["namespaces"].as_array_mut().unwrap();
    for n in ns.iter_mut() {
        let t = n["type"].as_str().unwrap().to_owned();
        if t == "uts" || t == "network" || t == "ipc" {
            let file = if t == "network" { "net" } else { &t };
            n["path"] = json!(format!("/proc/{pid}/ns/{file}"));
        }
    }
    b.sh("hostname; readlink /proc/self/ns/net");
    let out = rt.run_ok(&b, &id("nsb"));
    let net_a = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    assert_eq!(out, format!("container-a\n{}\n", net_a.display()));
    rt.ok(&["delete", "--force", &ida]);
    assert_clean(&rt, &ida, Some(a.path()));
}

#[test]
fn join_pid_namespace_by_path() {
    let rt = Rt::new();
    let a = Bundle::new(&["sleep", "1000"]);
    let ida = id("pida");
    rt.create(&a, &ida);
    rt.ok(&["start", &ida]);
    let pid = rt.state(&ida)["pid"].as_i64().unwrap();
    let mut b = Bundle::new(&["true"]);
    for n in b.spec["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
    {
        if n["type"] == "pid" {
            n["path"] = json!(format!("/proc/{pid}/ns/pid"));
        }
    }
    b.sh("cat /proc/1/cmdline | tr '\\0' ' '; echo; echo self=$$");
    let out = rt.run_ok(&b, &id("pidb"));
    assert!(
        out.starts_with("sleep 1000 \n"),
        "pid 1 of container a not visible: {out}"
    );
    assert!(
        !out.contains("self=1\n"),
        "joined pid namespace but got pid 1: {out}"
    );
    rt.ok(&["delete", "--force", &ida]);
}
