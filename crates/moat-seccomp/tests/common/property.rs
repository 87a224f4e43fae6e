//! The safety property shared by the fuzz target and the deterministic corpus test: compiling
//! never panics, every program validates, and a syscall that the profile denies without argument
//! conditions is never allowed, whatever its arguments (the filter returns something at least
//! as restrictive as the denial's action).

use moat_seccomp::{action_rank, compile, evaluate, ret, validate, Arch, SeccompData, SubArch};
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction};

/// The `SECCOMP_RET_*` action (without data) of an OCI action.
fn action_of(a: LinuxSeccompAction) -> u32 {
    use LinuxSeccompAction as A;
    match a {
        A::ScmpActKill | A::ScmpActKillThread => ret::KILL_THREAD,
        A::ScmpActKillProcess => ret::KILL_PROCESS,
        A::ScmpActTrap => ret::TRAP,
        A::ScmpActErrno => ret::ERRNO,
        A::ScmpActNotify => ret::USER_NOTIF,
        A::ScmpActTrace => ret::TRACE,
        A::ScmpActLog => ret::LOG,
        A::ScmpActAllow => ret::ALLOW,
    }
}

/// Argument vectors to probe: fixed edge values and every value the profile mentions, ±1.
fn probes(seccomp: &LinuxSeccomp) -> Vec<[u64; 6]> {
    let mut vals = vec![0u64, 1, 0xffff_ffff, 0x1_0000_0000, u64::MAX, 0x7E02_0000];
    for sc in seccomp.syscalls().iter().flatten() {
        for a in sc.args().iter().flatten() {
            for v in [a.value(), a.value_two().unwrap_or(0)] {
                vals.extend([v, v.wrapping_add(1), v.wrapping_sub(1)]);
            }
        }
    }
    vals.sort_unstable();
    vals.dedup();
    vals.truncate(64);
    let mut out = Vec::new();
    for &v in &vals {
        out.push([v; 6]);
        for i in 0..6 {
            let mut a = [0u64; 6];
            a[i] = v;
            out.push(a);
        }
    }
    out
}

/// Check the property for `seccomp` compiled for `arch`. `Err` describes a violation.
pub fn check(seccomp: &LinuxSeccomp, arch: Arch) -> Result<(), String> {
    let Ok(c) = compile(seccomp, arch) else {
        return Ok(()); // A refusal is fine; a panic is not.
    };
    validate(&c.program).map_err(|e| format!("invalid program: {e}"))?;
    let mut subs = vec![arch.sub_arch()];
    subs.extend(
        seccomp
            .architectures()
            .iter()
            .flatten()
            .filter_map(|a| SubArch::from_oci(*a, arch)),
    );
    let probes = probes(seccomp);
    for sc in seccomp.syscalls().iter().flatten() {
        let unconditional = sc.args().as_ref().is_none_or(|a| a.is_empty());
        if !unconditional || sc.action() == LinuxSeccompAction::ScmpActAllow {
            continue;
        }
        let want = action_of(sc.action());
        for name in sc.names() {
            for sub in &subs {
                let Some(nr) = sub.syscall_nr(name) else {
                    continue;
                };
                for args in &probes {
                    let data = SeccompData {
                        nr: nr as i32,
                        arch: sub.audit_arch(),
                        instruction_pointer: 0,
                        args: *args,
                    };
                    let got = evaluate(&c.program, &data);
                    if got == ret::ALLOW || action_rank(got) > action_rank(want) {
                        return Err(format!(
                            "{name} ({sub:?} nr {nr:#x}) args {args:x?}: got {got:#x}, the \
                             profile denies it with {want:#x}"
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Parse arbitrary bytes as `linux.seccomp` JSON and check both target architectures.
#[allow(dead_code)] // used by the fuzz target, not by every test binary
pub fn check_bytes(data: &[u8]) -> Result<(), String> {
    let Ok(seccomp) = serde_json::from_slice::<LinuxSeccomp>(data) else {
        return Ok(());
    };
    check(&seccomp, Arch::X86_64)?;
    check(&seccomp, Arch::Aarch64)
}
