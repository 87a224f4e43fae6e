//! What the v1 and v2 writers put in each interface file, checked on temporary directories.

use serde_json::json;

use super::{content, fake, res};
use crate::v1::{self, V1Dirs};
use crate::{v2, CgroupError};

const V2_FILES: &[&str] = &[
    "cgroup.controllers",
    "memory.max",
    "memory.swap.max",
    "memory.low",
    "memory.current=5000",
    "cpu.weight",
    "cpu.max=max 100000",
    "cpu.max.burst",
    "cpu.idle",
    "cpuset.cpus",
    "cpuset.mems",
    "pids.max",
    "io.weight",
    "io.max",
    "hugetlb.2MB.max",
    "hugetlb.1GB.max",
    "hugetlb.1GB.rsvd.max",
    "rdma.max",
    "memory.high",
];

fn v2dir() -> (tempfile::TempDir, std::path::PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let d = fake(&t.path().join("cg"), V2_FILES);
    (t, d)
}

#[test]
fn v2_memory_swap_is_swap_minus_limit() {
    let (_t, d) = v2dir();
    let r = res(json!({"memory": {"limit": 1000, "swap": 3000, "reservation": 500}}));
    v2::apply(&d, &r).unwrap();
    assert_eq!(content(&d, "memory.max"), "1000");
    assert_eq!(content(&d, "memory.swap.max"), "2000");
    assert_eq!(content(&d, "memory.low"), "500");
    v2::apply(&d, &res(json!({"memory": {"limit": -1}}))).unwrap();
    assert_eq!(content(&d, "memory.max"), "max");
    assert_eq!(content(&d, "memory.swap.max"), "max");
    v2::apply(&d, &res(json!({"memory": {"limit": 4096, "swap": 4096}}))).unwrap();
    assert_eq!(content(&d, "memory.swap.max"), "0");
}

#[test]
fn v2_memory_refusals_name_the_field() {
    let (_t, d) = v2dir();
    let cases = [
        (
            json!({"memory": {"kernel": 1}}),
            "linux.resources.memory.kernel: not supported on cgroup v2",
        ),
        (
            json!({"memory": {"kernelTCP": 1}}),
            "linux.resources.memory.kernelTCP: not supported",
        ),
        (
            json!({"memory": {"swappiness": 10}}),
            "linux.resources.memory.swappiness: not supported",
        ),
        (
            json!({"memory": {"disableOOMKiller": true}}),
            "linux.resources.memory.disableOOMKiller",
        ),
        (
            json!({"memory": {"swap": 100}}),
            "linux.resources.memory.swap: a swap limit needs a memory limit",
        ),
        (
            json!({"memory": {"limit": 200, "swap": 100}}),
            "below the memory limit",
        ),
        (
            json!({"memory": {"limit": -5}}),
            "linux.resources.memory.limit: -5 is negative",
        ),
        (
            json!({"memory": {"limit": 1000, "checkBeforeUpdate": true}}),
            "below the current usage 5000",
        ),
        (
            json!({"cpu": {"realtimeRuntime": 1000}}),
            "linux.resources.cpu.realtimeRuntime: not supported",
        ),
        (
            json!({"blockIO": {"leafWeight": 10}}),
            "linux.resources.blockIO.leafWeight: not supported",
        ),
        (
            json!({"network": {"classID": 1}}),
            "linux.resources.network.classID",
        ),
    ];
    for (j, want) in cases {
        let e = v2::apply(&d, &res(j.clone())).unwrap_err().to_string();
        assert!(e.contains(want), "{j}: {e}");
    }
    // Nothing was written by a refused update.
    assert_eq!(content(&d, "memory.max"), "");
}

#[test]
fn v2_swap_without_swap_accounting() {
    let t = tempfile::tempdir().unwrap();
    let d = fake(t.path(), &["memory.max"]);
    // Unlimited swap or no swap is what the container gets anyway.
    v2::apply(&d, &res(json!({"memory": {"limit": -1}}))).unwrap();
    let e = v2::apply(&d, &res(json!({"memory": {"limit": 10, "swap": 20}}))).unwrap_err();
    assert!(matches!(e, CgroupError::Unsupported(_)), "{e}");
    assert!(
        e.to_string().contains("memory.swap.max does not exist"),
        "{e}"
    );
}

#[test]
fn v2_cpu() {
    let (_t, d) = v2dir();
    let r = res(
        json!({"cpu": {"shares": 1024, "quota": 50000, "period": 100000, "burst": 1000,
                              "idle": 0, "cpus": "0-1", "mems": "0"}}),
    );
    v2::apply(&d, &r).unwrap();
    assert_eq!(content(&d, "cpu.weight"), "39");
    assert_eq!(content(&d, "cpu.max"), "50000 100000");
    assert_eq!(content(&d, "cpu.max.burst"), "1000");
    assert_eq!(content(&d, "cpu.idle"), "0");
    assert_eq!(content(&d, "cpuset.cpus"), "0-1");
    assert_eq!(content(&d, "cpuset.mems"), "0");
    // A lone period keeps the quota; a negative quota is "max".
    v2::apply(&d, &res(json!({"cpu": {"period": 50000}}))).unwrap();
    assert_eq!(content(&d, "cpu.max"), "50000 50000");
    v2::apply(&d, &res(json!({"cpu": {"quota": -1, "period": 100000}}))).unwrap();
    assert_eq!(content(&d, "cpu.max"), "max 100000");
    v2::apply(&d, &res(json!({"cpu": {"quota": 30000}}))).unwrap();
    assert_eq!(content(&d, "cpu.max"), "30000");
}

#[test]
fn shares_and_weights_convert_like_runc() {
    assert_eq!(crate::shares_to_weight(2), 1);
    assert_eq!(crate::shares_to_weight(1024), 39);
    assert_eq!(crate::shares_to_weight(262_144), 10_000);
    assert_eq!(crate::blkio_weight_to_io(10), 1);
    assert_eq!(crate::blkio_weight_to_io(500), 4950);
    assert_eq!(crate::blkio_weight_to_io(1000), 10_000);
}

#[test]
fn v2_pids_io_hugetlb_rdma_unified() {
    let (_t, d) = v2dir();
    for (limit, want) in [(-1, "max"), (0, "max"), (10, "10")] {
        v2::apply(&d, &res(json!({"pids": {"limit": limit}}))).unwrap();
        assert_eq!(content(&d, "pids.max"), want);
    }
    v2::apply(&d, &res(json!({"blockIO": {"weight": 500}}))).unwrap();
    assert_eq!(content(&d, "io.weight"), "default 4950");
    let r =
        json!({"blockIO": {"throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}]}});
    v2::apply(&d, &res(r)).unwrap();
    assert_eq!(content(&d, "io.max"), "8:0 rbps=1048576");
    let r = json!({"blockIO": {"throttleWriteIOPSDevice": [{"major": 8, "minor": 16, "rate": 0}]}});
    v2::apply(&d, &res(r)).unwrap();
    assert_eq!(content(&d, "io.max"), "8:16 wiops=max");
    let r = json!({"hugepageLimits": [{"pageSize": "2MB", "limit": -1}, {"pageSize": "1GB", "limit": 1073741824}]});
    v2::apply(&d, &res(r)).unwrap();
    assert_eq!(content(&d, "hugetlb.2MB.max"), "max");
    assert_eq!(content(&d, "hugetlb.1GB.max"), "1073741824");
    assert_eq!(content(&d, "hugetlb.1GB.rsvd.max"), "1073741824");
    let e = v2::apply(
        &d,
        &res(json!({"hugepageLimits": [{"pageSize": "../x", "limit": 1}]})),
    );
    assert!(e
        .unwrap_err()
        .to_string()
        .contains("hugepageLimits[0].pageSize"));
    let r = json!({"rdma": {"mlx5_0": {"hcaHandles": 3, "hcaObjects": 100}}});
    v2::apply(&d, &res(r)).unwrap();
    assert_eq!(
        content(&d, "rdma.max"),
        "mlx5_0 hca_handle=3 hca_object=100"
    );
    v2::apply(&d, &res(json!({"unified": {"memory.high": "4096"}}))).unwrap();
    assert_eq!(content(&d, "memory.high"), "4096");
    for (k, want) in [
        ("../escape", "must be a file name"),
        ("cgroup.procs", "managed by the runtime"),
        ("misc.max", "the misc controller is not enabled"),
    ] {
        let e = v2::apply(&d, &res(json!({"unified": {k: "1"}})))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(want) && e.contains("linux.resources.unified"),
            "{k}: {e}"
        );
    }
}

#[test]
fn missing_file_names_field_and_path() {
    let t = tempfile::tempdir().unwrap();
    let e = v2::apply(t.path(), &res(json!({"pids": {"limit": 5}}))).unwrap_err();
    let s = e.to_string();
    assert!(
        s.starts_with("linux.resources.pids.limit: ") && s.contains("pids.max does not exist"),
        "{s}"
    );
}

fn v1dirs(t: &std::path::Path, with_memsw: bool) -> V1Dirs {
    let mut memory = vec![
        "memory.limit_in_bytes=9223372036854771712",
        "memory.soft_limit_in_bytes",
        "memory.swappiness",
        "memory.oom_control",
        "memory.usage_in_bytes=100",
    ];
    if with_memsw {
        memory.push("memory.memsw.limit_in_bytes=9223372036854771712");
    }
    let pairs = [
        ("memory", fake(&t.join("memory"), &memory)),
        (
            "cpu",
            fake(
                &t.join("cpu"),
                &[
                    "cpu.shares",
                    "cpu.cfs_quota_us",
                    "cpu.cfs_period_us",
                    "cpu.cfs_burst_us",
                    "cpu.idle",
                ],
            ),
        ),
        (
            "cpuset",
            fake(&t.join("cpuset"), &["cpuset.cpus", "cpuset.mems"]),
        ),
        ("pids", fake(&t.join("pids"), &["pids.max"])),
        (
            "blkio",
            fake(
                &t.join("blkio"),
                &["blkio.bfq.weight", "blkio.throttle.read_bps_device"],
            ),
        ),
        (
            "devices",
            fake(&t.join("devices"), &["devices.allow", "devices.deny"]),
        ),
    ];
    let unified = fake(
        &t.join("unified"),
        &["cgroup.controllers", "hugetlb.2MB.max", "memory.pressure"],
    );
    V1Dirs::new(
        pairs.into_iter().map(|(c, d)| (c.to_owned(), d)),
        Some(unified),
    )
}

#[test]
fn v1_files() {
    let t = tempfile::tempdir().unwrap();
    let dirs = v1dirs(t.path(), true);
    let r = res(json!({
        "memory": {"limit": 2000, "swap": 4000, "reservation": 1000, "swappiness": 0, "disableOOMKiller": true},
        "cpu": {"shares": 512, "quota": 20000, "period": 100000, "burst": 0, "cpus": "0", "mems": "0"},
        "pids": {"limit": -1},
        "blockIO": {"weight": 300, "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 100}]},
        "hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}],
        "devices": [{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 1, "minor": 5, "access": "rw"}],
    }));
    v1::apply(&dirs, &r).unwrap();
    let m = dirs.get("memory").unwrap();
    assert_eq!(content(m, "memory.limit_in_bytes"), "2000");
    assert_eq!(content(m, "memory.memsw.limit_in_bytes"), "4000");
    assert_eq!(content(m, "memory.soft_limit_in_bytes"), "1000");
    assert_eq!(content(m, "memory.swappiness"), "0");
    assert_eq!(content(m, "memory.oom_control"), "1");
    let c = dirs.get("cpu").unwrap();
    assert_eq!(content(c, "cpu.shares"), "512");
    assert_eq!(content(c, "cpu.cfs_quota_us"), "20000");
    assert_eq!(content(c, "cpu.cfs_period_us"), "100000");
    assert_eq!(content(c, "cpu.cfs_burst_us"), "0");
    assert_eq!(content(dirs.get("cpuset").unwrap(), "cpuset.cpus"), "0");
    assert_eq!(content(dirs.get("pids").unwrap(), "pids.max"), "max");
    let b = dirs.get("blkio").unwrap();
    assert_eq!(content(b, "blkio.bfq.weight"), "300");
    assert_eq!(content(b, "blkio.throttle.read_bps_device"), "8:0 100");
    // hugetlb is not a v1 hierarchy here: the hybrid unified directory takes it, in v2 format.
    assert_eq!(
        content(dirs.unified().unwrap(), "hugetlb.2MB.max"),
        "4194304"
    );
    let d = dirs.get("devices").unwrap();
    assert_eq!(content(d, "devices.deny"), "a");
    assert_eq!(content(d, "devices.allow"), "c 1:5 rw");
    // Unlimited memory also lifts memory+swap.
    v1::apply(&dirs, &res(json!({"memory": {"limit": -1}}))).unwrap();
    assert_eq!(content(m, "memory.limit_in_bytes"), "-1");
    assert_eq!(content(m, "memory.memsw.limit_in_bytes"), "-1");
}

#[test]
fn v1_refusals() {
    let t = tempfile::tempdir().unwrap();
    let dirs = v1dirs(t.path(), false);
    let cases = [
        (
            json!({"memory": {"limit": 10, "swap": 20}}),
            "linux.resources.memory.swap: swap accounting is off",
        ),
        (
            json!({"memory": {"limit": 10, "checkBeforeUpdate": true}}),
            "below the current usage 100",
        ),
        (
            json!({"memory": {"swappiness": 101}}),
            "linux.resources.memory.swappiness: 101 is above 100",
        ),
        (
            json!({"network": {"classID": 1}}),
            "linux.resources.network.classID: the net_cls controller is not mounted",
        ),
        (
            json!({"network": {"priorities": [{"name": "eth0", "priority": 1}]}}),
            "net_prio controller is not mounted",
        ),
        (
            json!({"rdma": {"mlx5_0": {"hcaHandles": 1}}}),
            "linux.resources.rdma: the rdma controller is not mounted",
        ),
        (
            json!({"blockIO": {"leafWeight": 10}}),
            "linux.resources.blockIO.leafWeight: ",
        ),
        (
            json!({"unified": {"memory.high": "1"}}),
            "linux.resources.unified: invalid configuration: cannot use unified on cgroup v1",
        ),
        (
            json!({"memory": {"kernel": 1}}),
            "linux.resources.memory.kernel: ",
        ),
    ];
    for (j, want) in cases {
        let e = v1::apply(&dirs, &res(j.clone())).unwrap_err().to_string();
        assert!(e.contains(want), "{j}: {e}");
    }
    // As runc: refused with or without a unified mount, even where the file exists there; an
    // empty map is no request.
    let plain = V1Dirs::new([], None);
    for d in [&plain, &dirs] {
        let e = v1::apply(d, &res(json!({"unified": {"memory.pressure": "x"}}))).unwrap_err();
        assert!(
            e.to_string().contains("cannot use unified on cgroup v1"),
            "{e}"
        );
    }
    v1::apply(&dirs, &res(json!({"unified": {}}))).unwrap();
}

#[test]
fn v1_dirs_from_paths() {
    let dirs = V1Dirs::from_dirs(&[
        "/sys/fs/cgroup/cpu,cpuacct/moat/a".into(),
        "/sys/fs/cgroup/unified/moat/a".into(),
        "/elsewhere/x".into(),
    ]);
    // Classified by mountinfo on this host or by hierarchy name otherwise.
    assert!(dirs.unified().is_some());
    assert!(dirs.get("cpu").is_some() || dirs.get("cpu,cpuacct").is_some());
}
