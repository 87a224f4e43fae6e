//! Unit tests of the compiler, run through the BPF interpreter.

use oci_spec::runtime::LinuxSeccomp;

use crate::*;

const X86_64: u32 = AUDIT_ARCH_X86_64;
const EPERM: u32 = ret::ERRNO | 1;

fn profile(json: &str) -> LinuxSeccomp {
    serde_json::from_str(json).unwrap()
}

fn build(json: &str) -> Compiled {
    let c = compile(&profile(json), Arch::X86_64).unwrap();
    validate(&c.program).unwrap();
    c
}

fn call(c: &Compiled, arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    let data = SeccompData {
        nr: nr as i32,
        arch,
        instruction_pointer: 0,
        args,
    };
    evaluate(&c.program, &data)
}

fn nr(name: &str) -> u32 {
    SubArch::X86_64.syscall_nr(name).unwrap()
}

fn x64(c: &Compiled, name: &str, arg0: u64) -> u32 {
    call(c, X86_64, nr(name), [arg0, 0, 0, 0, 0, 0])
}

#[test]
fn default_action_and_errno() {
    let c = build(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
        {"names":["getcwd"],"action":"SCMP_ACT_ERRNO","errnoRet":95},
        {"names":["uname"],"action":"SCMP_ACT_ERRNO"},
        {"names":["getpid"],"action":"SCMP_ACT_KILL_PROCESS"},
        {"names":["gettid"],"action":"SCMP_ACT_KILL"},
        {"names":["getppid"],"action":"SCMP_ACT_KILL_THREAD"},
        {"names":["getuid"],"action":"SCMP_ACT_TRAP"},
        {"names":["getgid"],"action":"SCMP_ACT_TRACE","errnoRet":7},
        {"names":["geteuid"],"action":"SCMP_ACT_LOG"},
        {"names":["getegid"],"action":"SCMP_ACT_NOTIFY"}]}"#,
    );
    assert_eq!(x64(&c, "read", 0), ret::ALLOW);
    assert_eq!(x64(&c, "getcwd", 0), ret::ERRNO | 95);
    assert_eq!(x64(&c, "uname", 0), EPERM);
    assert_eq!(x64(&c, "getpid", 0), ret::KILL_PROCESS);
    assert_eq!(x64(&c, "gettid", 0), ret::KILL_THREAD);
    assert_eq!(x64(&c, "getppid", 0), ret::KILL_THREAD);
    assert_eq!(x64(&c, "getuid", 0), ret::TRAP);
    assert_eq!(x64(&c, "getgid", 0), ret::TRACE | 7);
    assert_eq!(x64(&c, "geteuid", 0), ret::LOG);
    assert_eq!(x64(&c, "getegid", 0), ret::USER_NOTIF);
    assert!(c.needs_notify_listener);
    assert_eq!(c.flags, filter_flags::NEW_LISTENER);

    let c = build(r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":38}"#);
    assert_eq!(x64(&c, "read", 0), ret::ERRNO | 38);
    assert!(!c.needs_notify_listener);
}

#[test]
fn flags_are_parsed() {
    let c = build(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_TSYNC",
        "SECCOMP_FILTER_FLAG_LOG","SECCOMP_FILTER_FLAG_SPEC_ALLOW"]}"#,
    );
    let f = filter_flags::TSYNC | filter_flags::LOG | filter_flags::SPEC_ALLOW;
    assert_eq!(c.flags, f);
    let c = build(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_TSYNC",
        "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"],
        "syscalls":[{"names":["getpid"],"action":"SCMP_ACT_NOTIFY"}]}"#,
    );
    let f = filter_flags::TSYNC
        | filter_flags::TSYNC_ESRCH
        | filter_flags::NEW_LISTENER
        | filter_flags::WAIT_KILLABLE_RECV;
    assert_eq!(c.flags, f);
    let c = build(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]}"#,
    );
    assert_eq!(c.flags, 0);
    assert_eq!(c.warnings.len(), 1);
}

#[test]
fn errors_name_the_field() {
    let bad_index = r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
        {"names":["read"],"action":"SCMP_ACT_ALLOW"},
        {"names":["write"],"action":"SCMP_ACT_ALLOW","args":[{"index":6,"value":0,"op":"SCMP_CMP_EQ"}]}]}"#;
    let e = compile(&profile(bad_index), Arch::X86_64).unwrap_err();
    assert_eq!(
        e.to_string(),
        "linux.seccomp.syscalls[1].args[0].index: argument index 6 out of range 0..=5"
    );
    let bad_errno = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
        {"names":["read"],"action":"SCMP_ACT_ERRNO","errnoRet":70000}]}"#;
    let e = compile(&profile(bad_errno), Arch::X86_64).unwrap_err();
    assert!(e
        .to_string()
        .starts_with("linux.seccomp.syscalls[0].errnoRet: 70000"));
    let e = compile(
        &profile(r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":65536}"#),
        Arch::X86_64,
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("linux.seccomp.defaultErrnoRet:"));
    let e = compile(
        &profile(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#),
        Arch::X86_64,
    )
    .unwrap_err();
    assert_eq!(e, SeccompError::NotifyDefault);
}

#[test]
fn personality_only_listed_values() {
    let c = build(
        r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
        {"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":0,"op":"SCMP_CMP_EQ"}]},
        {"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":131080,"op":"SCMP_CMP_EQ"}]}]}"#,
    );
    assert_eq!(x64(&c, "personality", 0), ret::ALLOW);
    assert_eq!(x64(&c, "personality", 0x20008), ret::ALLOW);
    for v in [
        1,
        8,
        0x20000,
        0x20009,
        0x1_0000_0000,
        0x1_0002_0008,
        u64::MAX,
    ] {
        assert_eq!(x64(&c, "personality", v), EPERM, "{v:#x}");
    }
    assert_eq!(x64(&c, "read", 0), EPERM);
}

/// One rule `arg<index> <op> value [valueTwo]` allowing `read`, default EPERM.
fn one_cond(op: &str, value: u64, value_two: Option<u64>) -> Compiled {
    let two = value_two.map_or(String::new(), |v| format!(r#","valueTwo":{v}"#));
    build(&format!(
        r#"{{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{{"names":["read"],
        "action":"SCMP_ACT_ALLOW","args":[{{"index":2,"value":{value},"op":"{op}"{two}}}]}}]}}"#
    ))
}

fn read_arg2(c: &Compiled, v: u64) -> bool {
    call(c, X86_64, 0, [0, 0, v, 0, 0, 0]) == ret::ALLOW
}

#[test]
fn sixty_four_bit_comparisons() {
    let probes = [
        0u64,
        1,
        0xffff_ffff,
        0x1_0000_0000,
        0x1_0000_0001,
        0x2_0000_0000,
        0xffff_ffff_0000_0000,
        u64::MAX,
    ];
    type Pred = fn(u64, u64) -> bool;
    let cases: [(&str, Pred); 6] = [
        ("SCMP_CMP_EQ", |a, v| a == v),
        ("SCMP_CMP_NE", |a, v| a != v),
        ("SCMP_CMP_LT", |a, v| a < v),
        ("SCMP_CMP_LE", |a, v| a <= v),
        ("SCMP_CMP_GE", |a, v| a >= v),
        ("SCMP_CMP_GT", |a, v| a > v),
    ];
    for (op, want) in cases {
        for &v in &probes {
            let c = one_cond(op, v, None);
            for &a in &probes {
                for a in [a, a.wrapping_add(1), a.wrapping_sub(1)] {
                    assert_eq!(read_arg2(&c, a), want(a, v), "{a:#x} {op} {v:#x}");
                }
            }
        }
    }
}

#[test]
fn masked_eq() {
    // (arg & 0x1_0000_00f0) == 0x1_0000_0010
    let c = one_cond("SCMP_CMP_MASKED_EQ", 0x1_0000_00f0, Some(0x1_0000_0010));
    assert!(read_arg2(&c, 0x1_0000_0010));
    assert!(read_arg2(&c, 0xff01_0000_ff1f));
    assert!(!read_arg2(&c, 0x10));
    assert!(!read_arg2(&c, 0x1_0000_0020));
    // Docker's clone rule: no namespace flags.
    let c = one_cond("SCMP_CMP_MASKED_EQ", 0x7E02_0000, None);
    assert!(read_arg2(&c, 0x0100_0000 | 0x0020_0000 | 0x11));
    assert!(!read_arg2(&c, 0x1000_0000)); // CLONE_NEWUSER
    assert!(!read_arg2(&c, 0x0002_0000)); // CLONE_NEWNS
}

#[test]
fn conditions_and_rules_combine() {
    // AND within a rule; OR across rules.
    let c = build(
        r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
        {"names":["read"],"action":"SCMP_ACT_ALLOW","args":[
            {"index":0,"value":3,"op":"SCMP_CMP_EQ"},{"index":2,"value":100,"op":"SCMP_CMP_LE"}]},
        {"names":["read"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":7,"op":"SCMP_CMP_EQ"}]}]}"#,
    );
    assert_eq!(call(&c, X86_64, 0, [3, 0, 100, 0, 0, 0]), ret::ALLOW);
    assert_eq!(call(&c, X86_64, 0, [3, 0, 101, 0, 0, 0]), EPERM);
    assert_eq!(call(&c, X86_64, 0, [7, 0, 101, 0, 0, 0]), ret::ALLOW);
    assert_eq!(call(&c, X86_64, 0, [4, 0, 1, 0, 0, 0]), EPERM);

    // Same index twice in one rule: ANDed (libseccomp), with a warning (runc would OR).
    let c = build(
        r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW",
        "args":[{"index":0,"value":3,"op":"SCMP_CMP_GE"},{"index":0,"value":5,"op":"SCMP_CMP_LE"}]}]}"#,
    );
    for (a, want) in [(2, EPERM), (3, ret::ALLOW), (5, ret::ALLOW), (6, EPERM)] {
        assert_eq!(call(&c, X86_64, 0, [a, 0, 0, 0, 0, 0]), want, "{a}");
    }
    assert_eq!(c.warnings.len(), 1);

    // The most restrictive matching rule wins, whatever the order.
    let c = build(
        r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
        {"names":["read"],"action":"SCMP_ACT_ALLOW"},
        {"names":["read"],"action":"SCMP_ACT_KILL_PROCESS","args":[{"index":0,"value":9,"op":"SCMP_CMP_EQ"}]},
        {"names":["write"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":1,"op":"SCMP_CMP_EQ"}]},
        {"names":["write"],"action":"SCMP_ACT_TRAP"}]}"#,
    );
    assert_eq!(x64(&c, "read", 1), ret::ALLOW);
    assert_eq!(x64(&c, "read", 9), ret::KILL_PROCESS);
    assert_eq!(x64(&c, "write", 1), ret::TRAP);
}

#[test]
fn architectures_and_x32() {
    let rules = r#""syscalls":[{"names":["read","chown32"],"action":"SCMP_ACT_ALLOW"}]"#;
    let only64 = build(&format!(r#"{{"defaultAction":"SCMP_ACT_ERRNO",{rules}}}"#));
    assert_eq!(call(&only64, X86_64, 0, [0; 6]), ret::ALLOW);
    assert_eq!(call(&only64, X86_64, 1, [0; 6]), EPERM);
    // x32 and i386 not admitted: bad-arch action; nr == -1 goes to the default action.
    assert_eq!(
        call(&only64, X86_64, X32_SYSCALL_BIT, [0; 6]),
        ret::KILL_PROCESS
    );
    assert_eq!(call(&only64, AUDIT_ARCH_I386, 3, [0; 6]), ret::KILL_PROCESS);
    assert_eq!(
        call(&only64, AUDIT_ARCH_AARCH64, 63, [0; 6]),
        ret::KILL_PROCESS
    );
    assert_eq!(call(&only64, X86_64, u32::MAX, [0; 6]), EPERM);
    // chown32 is i386-only: known on an admitted arch would be silent; here it warns.
    assert_eq!(only64.warnings.len(), 1, "{:?}", only64.warnings);
    assert!(only64.warnings[0].contains("names[1]: unknown syscall \"chown32\""));

    let all = build(&format!(
        r#"{{"defaultAction":"SCMP_ACT_ERRNO","architectures":["SCMP_ARCH_X86_64",
        "SCMP_ARCH_X86","SCMP_ARCH_X32","SCMP_ARCH_ARM"],{rules}}}"#
    ));
    assert_eq!(call(&all, X86_64, 0, [0; 6]), ret::ALLOW);
    assert_eq!(call(&all, X86_64, X32_SYSCALL_BIT, [0; 6]), ret::ALLOW);
    assert_eq!(call(&all, X86_64, X32_SYSCALL_BIT | 1, [0; 6]), EPERM);
    assert_eq!(call(&all, AUDIT_ARCH_I386, 3, [0; 6]), ret::ALLOW);
    assert_eq!(call(&all, AUDIT_ARCH_I386, 212, [0; 6]), ret::ALLOW);
    assert_eq!(call(&all, AUDIT_ARCH_I386, 0, [0; 6]), EPERM);
    assert_eq!(call(&all, X86_64, u32::MAX, [0; 6]), EPERM);
    // ARM has no table here: warned about, and its calls are killed.
    assert_eq!(all.warnings.len(), 1, "{:?}", all.warnings);
    assert!(all.warnings[0].starts_with("linux.seccomp.architectures[3]"));
    assert_eq!(call(&all, 0x4000_0028, 3, [0; 6]), ret::KILL_PROCESS);

    let arm = compile(
        &profile(&format!(r#"{{"defaultAction":"SCMP_ACT_ERRNO",{rules}}}"#)),
        Arch::Aarch64,
    )
    .unwrap();
    assert_eq!(call(&arm, AUDIT_ARCH_AARCH64, 63, [0; 6]), ret::ALLOW);
    assert_eq!(call(&arm, AUDIT_ARCH_AARCH64, 0, [0; 6]), EPERM);
    assert_eq!(call(&arm, X86_64, 0, [0; 6]), ret::KILL_PROCESS);
}

#[test]
fn unknown_names_warn_and_are_skipped() {
    let c = build(
        r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
        {"names":["read","no_such_call","write"],"action":"SCMP_ACT_ALLOW"}]}"#,
    );
    assert_eq!(x64(&c, "read", 0), ret::ALLOW);
    assert_eq!(x64(&c, "write", 0), ret::ALLOW);
    assert_eq!(
        c.warnings,
        [
            "linux.seccomp.syscalls[0].names[1]: unknown syscall \"no_such_call\" on \
          SCMP_ARCH_X86_64, skipped"
        ]
    );
}

#[test]
fn every_syscall_of_every_table_gets_its_own_action() {
    // Large profile: every known syscall with its own errno, forcing long jumps.
    for (sub, target, audit) in [
        (SubArch::X86_64, Arch::X86_64, X86_64),
        (SubArch::Aarch64, Arch::Aarch64, AUDIT_ARCH_AARCH64),
    ] {
        let syscalls: Vec<String> = sub
            .table()
            .iter()
            .map(|(n, nr)| {
                format!(
                    r#"{{"names":["{n}"],"action":"SCMP_ACT_ERRNO","errnoRet":{},
                    "args":[{{"index":1,"value":{},"op":"SCMP_CMP_NE"}}]}}"#,
                    nr + 1000,
                    nr + 1
                )
            })
            .collect();
        let json = format!(
            r#"{{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{}]}}"#,
            syscalls.join(",")
        );
        let c = compile(&profile(&json), target).unwrap();
        validate(&c.program).unwrap();
        assert!(c.program.iter().any(|i| i.code == op::JA), "no long jump");
        for &(_, nr) in sub.table() {
            assert_eq!(call(&c, audit, nr, [0; 6]), ret::ERRNO | (nr + 1000));
            assert_eq!(
                call(&c, audit, nr, [0, u64::from(nr) + 1, 0, 0, 0, 0]),
                ret::ALLOW
            );
        }
        assert_eq!(call(&c, audit, 5000, [0; 6]), ret::ALLOW);
    }
}

#[test]
fn default_profile_policy() {
    let p = default_profile();
    let c = compile(&p, Arch::X86_64).unwrap();
    assert!(c.warnings.is_empty(), "{:#?}", c.warnings);
    assert!(c.program.len() <= MAX_INSNS);
    for name in [
        "read",
        "write",
        "exit_group",
        "openat",
        "execve",
        "ptrace",
        "arch_prctl",
    ] {
        assert_eq!(x64(&c, name, 0), ret::ALLOW, "{name}");
    }
    // clone without namespace flags (SIGCHLD | CLONE_VM | CLONE_THREAD ...) is fine.
    assert_eq!(x64(&c, "clone", 0x003d_0f00), ret::ALLOW);
    assert_eq!(x64(&c, "clone", 0x1000_0000 | 17), EPERM); // CLONE_NEWUSER
    assert_eq!(x64(&c, "clone", 0x2000_0000 | 17), EPERM); // CLONE_NEWPID
    assert_eq!(x64(&c, "clone3", 0), ret::ERRNO | 38);
    for name in [
        "unshare",
        "mount",
        "umount2",
        "setns",
        "keyctl",
        "add_key",
        "kexec_load",
        "bpf",
        "reboot",
        "init_module",
        "open_by_handle_at",
        "fsopen",
        "userfaultfd",
    ] {
        assert_eq!(x64(&c, name, 0), EPERM, "{name}");
    }
    assert_eq!(x64(&c, "socket", 2), ret::ALLOW); // AF_INET
    assert_eq!(x64(&c, "socket", 40), EPERM); // AF_VSOCK
    assert_eq!(x64(&c, "personality", 0xffff_ffff), ret::ALLOW);
    assert_eq!(x64(&c, "personality", 0x0040_0000), EPERM); // READ_IMPLIES_EXEC
                                                            // i386 and x32 are admitted with their own numbers.
    assert_eq!(call(&c, AUDIT_ARCH_I386, 3, [0; 6]), ret::ALLOW); // read
    assert_eq!(call(&c, AUDIT_ARCH_I386, 310, [0; 6]), EPERM); // unshare
    assert_eq!(call(&c, X86_64, X32_SYSCALL_BIT | 1, [0; 6]), ret::ALLOW); // write
    assert_eq!(call(&c, X86_64, X32_SYSCALL_BIT | 272, [0; 6]), EPERM); // unshare
    assert_eq!(call(&c, AUDIT_ARCH_AARCH64, 63, [0; 6]), ret::KILL_PROCESS);
    assert!(!c.needs_notify_listener);
    assert_eq!(c.flags, 0);

    let arm = compile(&p, Arch::Aarch64).unwrap();
    assert_eq!(call(&arm, AUDIT_ARCH_AARCH64, 63, [0; 6]), ret::ALLOW); // read
    assert_eq!(call(&arm, AUDIT_ARCH_AARCH64, 97, [0; 6]), EPERM); // unshare
}

#[test]
fn allow_only_admits_the_names_and_fails_the_rest() {
    let c = compile(
        &allow_only(&["read", "write", "no_such_call"], 38),
        Arch::X86_64,
    )
    .unwrap();
    validate(&c.program).unwrap();
    assert_eq!(x64(&c, "read", 0), ret::ALLOW);
    assert_eq!(x64(&c, "write", 7), ret::ALLOW);
    assert_eq!(x64(&c, "execve", 0), ret::ERRNO | 38);
    assert_eq!(x64(&c, "socket", 0), ret::ERRNO | 38);
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    // Another architecture's calls are not admitted.
    assert_ne!(call(&c, AUDIT_ARCH_I386, 3, [0; 6]), ret::ALLOW);
}
