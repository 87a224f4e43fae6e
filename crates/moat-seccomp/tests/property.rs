//! The fuzz target's property over a deterministic, generated corpus (so it runs in
//! `cargo test` without cargo-fuzz), plus the committed seed corpus.

mod common;

use common::property::{check, check_bytes};
use moat_seccomp::{compile, default_profile, Arch, SubArch};
use oci_spec::runtime::LinuxSeccomp;

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const ACTIONS: &[&str] = &[
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_TRAP",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_LOG",
    "SCMP_ACT_NOTIFY",
];
const OPS: &[&str] = &[
    "SCMP_CMP_NE",
    "SCMP_CMP_LT",
    "SCMP_CMP_LE",
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_MASKED_EQ",
];
const ARCHES: &[&str] = &[
    "SCMP_ARCH_X86_64",
    "SCMP_ARCH_X86",
    "SCMP_ARCH_X32",
    "SCMP_ARCH_AARCH64",
    "SCMP_ARCH_ARM",
    "SCMP_ARCH_NATIVE",
];
const VALUES: &[u64] = &[
    0,
    1,
    2,
    40,
    0x7E02_0000,
    0xffff_ffff,
    0x1_0000_0000,
    u64::MAX,
];

fn random_profile(rng: &mut Rng) -> String {
    // A few names so rules collide on the same syscall, plus the whole table now and then.
    let table: Vec<&str> = SubArch::X86_64.table().iter().map(|(n, _)| *n).collect();
    let small = [
        "read",
        "write",
        "clone",
        "personality",
        "socket",
        "chown32",
        "recv",
        "nope",
    ];
    let mut rules = Vec::new();
    let max_rules = if rng.below(8) == 0 { 400 } else { 12 };
    for _ in 0..rng.below(max_rules) {
        let names: Vec<String> = (0..1 + rng.below(3))
            .map(|_| {
                let n = if rng.below(3) == 0 {
                    rng.pick(&table)
                } else {
                    rng.pick(&small)
                };
                format!("{n:?}")
            })
            .collect();
        let mut action = rng.pick(ACTIONS);
        if action == "SCMP_ACT_NOTIFY" && rng.below(2) == 0 {
            action = "SCMP_ACT_ERRNO";
        }
        let errno = match rng.below(4) {
            0 => format!(r#","errnoRet":{}"#, rng.below(200)),
            _ => String::new(),
        };
        let args: Vec<String> = (0..[0, 0, 1, 2, 3][rng.below(5)])
            .map(|_| {
                let two = match rng.below(3) {
                    0 => format!(r#","valueTwo":{}"#, VALUES[rng.below(VALUES.len())]),
                    _ => String::new(),
                };
                let max_index = if rng.below(20) == 0 { 8 } else { 6 };
                format!(
                    r#"{{"index":{},"value":{},"op":"{}"{two}}}"#,
                    rng.below(max_index),
                    VALUES[rng.below(VALUES.len())],
                    rng.pick(OPS)
                )
            })
            .collect();
        rules.push(format!(
            r#"{{"names":[{}],"action":"{action}"{errno},"args":[{}]}}"#,
            names.join(","),
            args.join(",")
        ));
    }
    let arches: Vec<String> = (0..rng.below(4))
        .map(|_| format!("{:?}", rng.pick(ARCHES)))
        .collect();
    let mut default = rng.pick(ACTIONS);
    if default == "SCMP_ACT_NOTIFY" {
        default = "SCMP_ACT_KILL_PROCESS";
    }
    format!(
        r#"{{"defaultAction":"{default}","defaultErrnoRet":{},"architectures":[{}],"syscalls":[{}]}}"#,
        rng.below(100),
        arches.join(","),
        rules.join(",")
    )
}

#[test]
fn generated_corpus_holds_the_property() {
    let mut rng = Rng(0x5ecc_0a7c_0ffe_e123);
    let mut compiled = 0;
    for i in 0..300 {
        let json = random_profile(&mut rng);
        if let Err(e) = check_bytes(json.as_bytes()) {
            panic!("profile #{i} violates the property: {e}\n{json}");
        }
        let seccomp: LinuxSeccomp = serde_json::from_str(&json).unwrap();
        compiled += usize::from(compile(&seccomp, Arch::X86_64).is_ok());
    }
    // The generator must mostly produce profiles that compile, or the property says little.
    assert!(
        compiled > 200,
        "only {compiled} of 300 generated profiles compiled"
    );
}

#[test]
fn seed_corpus_holds_the_property() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/compile");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        check_bytes(&data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        n += 1;
    }
    assert!(n >= 3, "seed corpus missing");
}

#[test]
fn default_profile_holds_the_property() {
    check(&default_profile(), Arch::X86_64).unwrap();
    check(&default_profile(), Arch::Aarch64).unwrap();
}
