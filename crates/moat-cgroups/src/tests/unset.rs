//! One test per row of [`crate::unset::RULES`]: the value that means "unset" leaves the field
//! out, the special values survive, invalid values are refused naming the field; and `update`
//! writes nothing when any part of the request is refused.

use serde_json::{json, Value};

use super::{content, fake, res};
use crate::unset::{normalize, RULES};
use crate::v1::V1Dirs;
use crate::{v2, Cgroup};

/// The normalized JSON of `linux.resources` given as JSON.
fn norm(j: Value) -> Value {
    serde_json::to_value(normalize(&res(j)).unwrap()).unwrap()
}

fn refused(j: Value, field: &str) {
    let e = normalize(&res(j.clone())).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("linux.resources.{field}: ")),
        "{j}: {e}"
    );
}

/// `unset` values of `field` (a path such as memory.limit) vanish; `kept` values stay as given.
fn check(section: &str, key: &str, unset: &[Value], kept: &[Value]) {
    for u in unset {
        let out = norm(json!({ section: { key: u } }));
        assert!(out.get(section).is_none(), "{section}.{key}={u}: {out}");
        // Beside a value that is set, the unset one is still dropped.
        let other = if key == "limit" {
            "reservation"
        } else {
            "limit"
        };
        if section == "memory" {
            let out = norm(json!({ "memory": { key: u, other: 100 } }));
            assert!(out["memory"].get(key).is_none(), "{key}={u}: {out}");
        }
    }
    for k in kept {
        let out = norm(json!({ section: { key: k } }));
        assert_eq!(&out[section][key], k, "{section}.{key}={k}: {out}");
    }
}

macro_rules! rule_test {
    ($name:ident, $field:literal, $body:block) => {
        #[test]
        fn $name() {
            assert!(
                RULES.iter().any(|r| r.field == $field),
                "{} is not in RULES",
                $field
            );
            $body
        }
    };
}

rule_test!(memory_limit, "memory.limit", {
    check("memory", "limit", &[json!(0)], &[json!(-1), json!(4096)]);
    refused(json!({"memory": {"limit": -2}}), "memory.limit");
});
rule_test!(memory_reservation, "memory.reservation", {
    check(
        "memory",
        "reservation",
        &[json!(0)],
        &[json!(-1), json!(4096)],
    );
    refused(json!({"memory": {"reservation": -7}}), "memory.reservation");
});
rule_test!(memory_swap, "memory.swap", {
    check("memory", "swap", &[json!(0)], &[json!(-1), json!(8192)]);
    refused(json!({"memory": {"swap": -3}}), "memory.swap");
});
rule_test!(memory_kernel, "memory.kernel", {
    check("memory", "kernel", &[json!(0)], &[json!(4096)]);
});
rule_test!(memory_kernel_tcp, "memory.kernelTCP", {
    check("memory", "kernelTCP", &[json!(0)], &[json!(4096)]);
});
rule_test!(memory_swappiness, "memory.swappiness", {
    check(
        "memory",
        "swappiness",
        &[json!(u64::MAX)],
        &[json!(0), json!(60), json!(100)],
    );
    refused(json!({"memory": {"swappiness": 101}}), "memory.swappiness");
});
rule_test!(memory_disable_oom_killer, "memory.disableOOMKiller", {
    check(
        "memory",
        "disableOOMKiller",
        &[json!(false)],
        &[json!(true)],
    );
});
rule_test!(memory_use_hierarchy, "memory.useHierarchy", {
    check("memory", "useHierarchy", &[json!(false)], &[json!(true)]);
});
rule_test!(memory_check_before_update, "memory.checkBeforeUpdate", {
    check(
        "memory",
        "checkBeforeUpdate",
        &[json!(false)],
        &[json!(true)],
    );
});
rule_test!(cpu_shares, "cpu.shares", {
    check(
        "cpu",
        "shares",
        &[json!(0)],
        &[json!(2), json!(1024), json!(262144)],
    );
    refused(json!({"cpu": {"shares": 1}}), "cpu.shares");
    refused(json!({"cpu": {"shares": 262145}}), "cpu.shares");
});
rule_test!(cpu_quota, "cpu.quota", {
    check(
        "cpu",
        "quota",
        &[json!(0)],
        &[json!(-1), json!(1000), json!(50000)],
    );
    // Any negative means "no limit", spelled -1.
    assert_eq!(
        norm(json!({"cpu": {"quota": -5}}))["cpu"]["quota"],
        json!(-1)
    );
    refused(json!({"cpu": {"quota": 999}}), "cpu.quota");
});
rule_test!(cpu_period, "cpu.period", {
    check(
        "cpu",
        "period",
        &[json!(0)],
        &[json!(1000), json!(100000), json!(1000000)],
    );
    refused(json!({"cpu": {"period": 999}}), "cpu.period");
    refused(json!({"cpu": {"period": 1000001}}), "cpu.period");
});
rule_test!(cpu_burst, "cpu.burst", {
    check("cpu", "burst", &[], &[json!(0), json!(1000)]);
});
rule_test!(cpu_realtime_runtime, "cpu.realtimeRuntime", {
    check("cpu", "realtimeRuntime", &[json!(0)], &[json!(950000)]);
});
rule_test!(cpu_realtime_period, "cpu.realtimePeriod", {
    check("cpu", "realtimePeriod", &[json!(0)], &[json!(1000000)]);
});
rule_test!(cpu_cpus, "cpu.cpus", {
    check("cpu", "cpus", &[json!("")], &[json!("0-1")]);
});
rule_test!(cpu_mems, "cpu.mems", {
    check("cpu", "mems", &[json!("")], &[json!("0")]);
});
rule_test!(cpu_idle, "cpu.idle", {
    check("cpu", "idle", &[], &[json!(0), json!(1)]);
});
rule_test!(pids_limit, "pids.limit", {
    check("pids", "limit", &[json!(0)], &[json!(-1), json!(100)]);
});
rule_test!(blockio_weight, "blockIO.weight", {
    check(
        "blockIO",
        "weight",
        &[json!(0)],
        &[json!(10), json!(500), json!(1000)],
    );
    refused(json!({"blockIO": {"weight": 5}}), "blockIO.weight");
    refused(json!({"blockIO": {"weight": 1001}}), "blockIO.weight");
});
rule_test!(blockio_leaf_weight, "blockIO.leafWeight", {
    check("blockIO", "leafWeight", &[json!(0)], &[json!(100)]);
    refused(json!({"blockIO": {"leafWeight": 9}}), "blockIO.leafWeight");
});
rule_test!(blockio_weight_device, "blockIO.weightDevice[].weight", {
    let out = norm(json!({"blockIO": {"weightDevice": [
        {"major": 8, "minor": 0, "weight": 0},
        {"major": 8, "minor": 16, "weight": 200},
    ]}}));
    assert_eq!(
        out["blockIO"]["weightDevice"],
        json!([{"major": 8, "minor": 16, "weight": 200}])
    );
    let out = norm(json!({"blockIO": {"weightDevice": [{"major": 8, "minor": 0, "weight": 0}]}}));
    assert!(out.get("blockIO").is_none(), "{out}");
    refused(
        json!({"blockIO": {"weightDevice": [{"major": 8, "minor": 0, "weight": 2}]}}),
        "blockIO.weightDevice[0].weight",
    );
});
rule_test!(
    blockio_weight_device_leaf,
    "blockIO.weightDevice[].leafWeight",
    {
        let out = norm(json!({"blockIO": {"weightDevice": [
            {"major": 8, "minor": 0, "weight": 300, "leafWeight": 0},
        ]}}));
        assert_eq!(
            out["blockIO"]["weightDevice"],
            json!([{"major": 8, "minor": 0, "weight": 300}])
        );
    }
);
rule_test!(blockio_throttle_rate, "blockIO.throttle*Device[].rate", {
    let t = json!([{"major": 8, "minor": 0, "rate": 0}]);
    for key in [
        "throttleReadBpsDevice",
        "throttleWriteBpsDevice",
        "throttleReadIOPSDevice",
        "throttleWriteIOPSDevice",
    ] {
        assert_eq!(norm(json!({"blockIO": {key: t}}))["blockIO"][key], t);
    }
});
rule_test!(hugepage_limit, "hugepageLimits[].limit", {
    let h = json!([{"pageSize": "2MB", "limit": 0}]);
    assert_eq!(norm(json!({"hugepageLimits": h}))["hugepageLimits"], h);
});
rule_test!(network_class_id, "network.classID", {
    check("network", "classID", &[json!(0)], &[json!(0x100001)]);
});
rule_test!(network_priorities, "network.priorities", {
    check(
        "network",
        "priorities",
        &[json!([])],
        &[json!([{"name": "eth0", "priority": 1}])],
    );
});
rule_test!(rdma, "rdma", {
    let r = json!({"mlx5_0": {"hcaHandles": 3}});
    assert_eq!(norm(json!({"rdma": r}))["rdma"], r);
});
rule_test!(unified, "unified", {
    let u = json!({"memory.high": "4096"});
    assert_eq!(norm(json!({"unified": u}))["unified"], u);
});
rule_test!(devices, "devices", {
    let d = json!([{"allow": false, "access": "rwm"}]);
    assert_eq!(norm(json!({"devices": d}))["devices"], d);
});

#[test]
fn every_rule_is_tested() {
    // The rule_test! names above, one per row: keep RULES and the tests in step.
    assert_eq!(RULES.len(), 30);
}

/// What Docker 20.10 sends for `docker run` with no limits: nothing to write but the devices.
#[test]
fn docker_default_resources_write_nothing_but_devices() {
    let out = norm(json!({
        "devices": [{"allow": false, "access": "rwm"}],
        "memory": {"disableOOMKiller": false},
        "cpu": {"shares": 0},
        "blockIO": {"weight": 0},
    }));
    assert_eq!(out, json!({"devices": [{"allow": false, "access": "rwm"}]}));
}

/// `update` checks the whole request before writing: a refused part leaves every file as it was.
#[test]
fn update_is_all_or_nothing() {
    let t = tempfile::tempdir().unwrap();
    let d = fake(
        &t.path().join("cg"),
        &[
            "cgroup.controllers",
            "memory.max=max",
            "cpu.max=max 100000",
            "pids.max=max",
        ],
    );
    let cg = Cgroup::V2 { dir: d.clone() };
    // io.weight is missing: the memory limit before it must not be written.
    let e = cg
        .update(&res(
            json!({"memory": {"limit": 4096}, "blockIO": {"weight": 100}}),
        ))
        .unwrap_err()
        .to_string();
    assert!(e.contains("linux.resources.blockIO.weight"), "{e}");
    assert_eq!(content(&d, "memory.max"), "max");
    // An invalid value anywhere: nothing written.
    let e = cg
        .update(&res(
            json!({"memory": {"limit": 4096}, "cpu": {"period": 10}}),
        ))
        .unwrap_err()
        .to_string();
    assert!(e.contains("linux.resources.cpu.period"), "{e}");
    assert_eq!(content(&d, "memory.max"), "max");
    // What Docker sends for `docker update --memory 4096 --pids-limit 5`.
    cg.update(&res(json!({
        "memory": {"limit": 4096, "swap": 0, "reservation": 0, "kernel": 0},
        "cpu": {"shares": 0, "quota": 0, "period": 0, "cpus": "", "mems": ""},
        "blockIO": {"weight": 0},
        "pids": {"limit": 5},
    })))
    .unwrap();
    assert_eq!(content(&d, "memory.max"), "4096");
    assert_eq!(content(&d, "pids.max"), "5");
    assert_eq!(content(&d, "cpu.max"), "max 100000");
}

/// A value the kernel refuses part-way (here: a directory where a file should be, EISDIR)
/// restores the files written before it.
#[test]
fn update_rolls_back_a_kernel_refusal() {
    let t = tempfile::tempdir().unwrap();
    let d = fake(
        &t.path().join("cg"),
        &["cgroup.controllers", "memory.max=max"],
    );
    std::fs::create_dir(d.join("pids.max")).unwrap();
    let cg = Cgroup::V2 { dir: d.clone() };
    let e = cg
        .update(&res(
            json!({"memory": {"limit": 4096}, "pids": {"limit": 5}}),
        ))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("linux.resources.pids.limit: "), "{e}");
    assert_eq!(content(&d, "memory.max"), "max");
}

/// The v1 writer gets the same normalized request.
#[test]
fn v1_docker_defaults() {
    let t = tempfile::tempdir().unwrap();
    let blkio = fake(&t.path().join("blkio"), &["blkio.throttle.read_bps_device"]);
    let mem = fake(
        &t.path().join("memory"),
        &["memory.limit_in_bytes=9223372036854771712"],
    );
    let dirs = V1Dirs::new(
        [
            ("blkio".to_owned(), blkio),
            ("memory".to_owned(), mem.clone()),
        ],
        None,
    );
    // No blkio.bfq.weight, no memory.oom_control: Docker's zeros must not need them.
    crate::v1::apply(
        &dirs,
        &res(json!({"memory": {"disableOOMKiller": false}, "blockIO": {"weight": 0}})),
    )
    .unwrap();
    assert_eq!(
        content(&mem, "memory.limit_in_bytes"),
        "9223372036854771712"
    );
    let _ = v2::swap_max(None, None).unwrap();
}
