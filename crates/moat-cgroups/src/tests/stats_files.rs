//! Stats and OOM counters parsed from fixture files, and the JSON names runc uses.

use super::fake;
use crate::stats::{self, parse_blkio_v1};
use crate::v1::V1Dirs;
use crate::Cgroup;

#[test]
fn v2_stats() {
    let t = tempfile::tempdir().unwrap();
    let d = fake(
        t.path(),
        &[
            "cpu.stat=usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 10\nnr_throttled 2\nthrottled_usec 7\n",
            "memory.current=4096",
            "memory.max=max",
            "memory.peak=8192",
            "memory.events=low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
            "memory.stat=anon 1024\nfile 2048\n",
            "memory.swap.current=100",
            "memory.swap.max=1000",
            "pids.current=3",
            "pids.max=max",
            "io.stat=8:0 rbytes=4096 wbytes=512 rios=2 wios=1 dbytes=0 dios=0\n",
            "hugetlb.2MB.current=2097152",
            "hugetlb.2MB.max=max",
            "hugetlb.2MB.rsvd.max=max",
            "hugetlb.2MB.events=max 4\n",
        ],
    );
    let s = stats::v2(&d).unwrap();
    assert_eq!(s.cpu.usage.total, 1_500_000);
    assert_eq!((s.cpu.usage.user, s.cpu.usage.kernel), (1_000_000, 500_000));
    assert_eq!(s.cpu.throttling.throttled_time, 7000);
    assert_eq!(s.memory.cache, 2048);
    assert_eq!(
        (
            s.memory.usage.usage,
            s.memory.usage.max,
            s.memory.usage.failcnt
        ),
        (4096, 8192, 3)
    );
    assert_eq!(s.memory.usage.limit, u64::MAX);
    assert_eq!(
        (s.memory.swap.usage, s.memory.swap.limit),
        (4196, u64::MAX),
        "memory+swap, saturating"
    );
    assert_eq!((s.pids.current, s.pids.limit), (3, 0));
    assert_eq!(s.blkio.io_service_bytes_recursive.len(), 2);
    assert_eq!(s.blkio.io_serviced_recursive[0].op, "Read");
    assert_eq!(s.hugetlb.keys().collect::<Vec<_>>(), ["2MB"]);
    assert_eq!(
        (s.hugetlb["2MB"].usage, s.hugetlb["2MB"].failcnt),
        (2097152, 4)
    );
    let j = serde_json::to_value(&s).unwrap();
    assert_eq!(j["cpu"]["throttling"]["throttledPeriods"], 2);
    assert_eq!(j["blkio"]["ioServiceBytesRecursive"][0]["op"], "Read");
    assert_eq!(j["memory"]["raw"]["file"], 2048);
    assert!(j["memory"]["kernelTCP"].is_object());
    assert_eq!(j["hugetlb"]["2MB"]["failcnt"], 4);
    let back: stats::Stats = serde_json::from_value(j).unwrap();
    assert_eq!(back, s);
    let cg = Cgroup::V2 { dir: d };
    assert_eq!(cg.oom_kill_count().unwrap(), 1);
}

#[test]
fn v1_stats() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path();
    let pairs = [
        ("cpuacct", fake(&p.join("cpuacct"), &["cpuacct.usage=300", "cpuacct.usage_percpu=100 200 \n", "cpuacct.stat=user 2\nsystem 1\n"])),
        ("cpu", fake(&p.join("cpu"), &["cpu.stat=nr_periods 5\nnr_throttled 1\nthrottled_time 99\n"])),
        ("memory", fake(&p.join("memory"), &[
            "memory.stat=cache 10\nrss 20\n", "memory.usage_in_bytes=30", "memory.max_usage_in_bytes=40",
            "memory.limit_in_bytes=50", "memory.failcnt=1", "memory.memsw.usage_in_bytes=60",
            "memory.oom_control=oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        ])),
        ("pids", fake(&p.join("pids"), &["pids.current=1", "pids.max=7"])),
        ("blkio", fake(&p.join("blkio"), &["blkio.throttle.io_service_bytes_recursive=8:0 Read 4096\n8:0 Write 0\nTotal 4096\n"])),
        ("hugetlb", fake(&p.join("hugetlb"), &["hugetlb.2MB.limit_in_bytes=1", "hugetlb.2MB.usage_in_bytes=2", "hugetlb.2MB.failcnt=3"])),
    ];
    let dirs = V1Dirs::new(pairs.into_iter().map(|(c, d)| (c.to_owned(), d)), None);
    let s = stats::v1(&dirs).unwrap();
    assert_eq!(s.cpu.usage.total, 300);
    assert_eq!(s.cpu.usage.percpu, [100, 200]);
    assert_eq!(
        (s.cpu.usage.user, s.cpu.usage.kernel),
        (20_000_000, 10_000_000)
    );
    assert_eq!(s.cpu.throttling.periods, 5);
    assert_eq!(
        (s.memory.cache, s.memory.usage.usage, s.memory.usage.max),
        (10, 30, 40)
    );
    assert_eq!(
        (
            s.memory.usage.limit,
            s.memory.usage.failcnt,
            s.memory.swap.usage
        ),
        (50, 1, 60)
    );
    assert_eq!((s.pids.current, s.pids.limit), (1, 7));
    assert_eq!(s.blkio.io_service_bytes_recursive.len(), 2);
    assert_eq!(s.hugetlb["2MB"].failcnt, 3);
    let mem = p.join("memory");
    let cg = Cgroup::V1 {
        dirs: vec![mem.clone()],
    };
    // A path outside /sys/fs/cgroup has no controller: a clear error rather than a guess.
    assert!(cg.oom_kill_count().is_err());
    assert_eq!(
        crate::fsio::keyed_u64(&mem.join("memory.oom_control"), "oom_kill").unwrap(),
        2
    );
}

#[test]
fn blkio_v1_lines() {
    let e = parse_blkio_v1("8:0 Read 1\n8:16 Async 2\nTotal 3\n8:0 5\n");
    assert_eq!(e.len(), 3);
    assert_eq!(
        (e[1].major, e[1].minor, e[1].op.as_str(), e[1].value),
        (8, 16, "Async", 2)
    );
    assert_eq!(e[2].op, "");
}
