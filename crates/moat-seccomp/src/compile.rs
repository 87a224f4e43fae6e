//! From OCI `linux.seccomp` to resolved, ordered rules per calling convention, then to BPF.
//!
//! The semantics it follows are documented on [`compile`].
//!
//! What it must never do: silently change what a profile means: every field it ignores or
//! reinterprets yields a warning naming the field.

use std::collections::{BTreeMap, BTreeSet};

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator, LinuxSyscall,
};

use crate::arch::{Arch, SubArch};
use crate::bpf::{action_rank, ret, validate, SockFilter, MAX_INSNS};
use crate::codegen::{generate, ArchRules, CmpOp, Cond, Rule};
use crate::SeccompError;

/// What calls from an unadmitted architecture get.
pub const BAD_ARCH_ACTION: u32 = ret::KILL_PROCESS;

/// `SECCOMP_FILTER_FLAG_*` bits for `seccomp(SECCOMP_SET_MODE_FILTER, flags, ...)`.
pub mod filter_flags {
    /// Synchronise all threads to the filter.
    pub const TSYNC: u32 = 1 << 0;
    /// Log all non-ALLOW actions.
    pub const LOG: u32 = 1 << 1;
    /// Disable the speculative store bypass mitigation.
    pub const SPEC_ALLOW: u32 = 1 << 2;
    /// Return a user-notification listener fd.
    pub const NEW_LISTENER: u32 = 1 << 3;
    /// With TSYNC: report a sync failure as ESRCH (needed to combine TSYNC and NEW_LISTENER).
    pub const TSYNC_ESRCH: u32 = 1 << 4;
    /// Notified tasks wait killably once the listener received the notification.
    pub const WAIT_KILLABLE_RECV: u32 = 1 << 5;
}

/// A compiled filter, ready for `seccomp(2)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    /// The classic BPF program (at most 4096 instructions, validated).
    pub program: Vec<SockFilter>,
    /// `SECCOMP_FILTER_FLAG_*` to pass to `seccomp(2)`; includes `NEW_LISTENER` (and
    /// `TSYNC_ESRCH` when `TSYNC` is also requested) if any rule notifies.
    pub flags: u32,
    /// Some action is `SCMP_ACT_NOTIFY`: the installer gets a listener fd to hand over.
    pub needs_notify_listener: bool,
    /// Non-fatal findings (unknown syscalls, ignored fields), each naming its field.
    pub warnings: Vec<String>,
}

const EPERM: u32 = 1;

/// The `SECCOMP_RET_*` value of an OCI action.
fn action_value(
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    field: &str,
    warnings: &mut Vec<String>,
) -> Result<u32, SeccompError> {
    use LinuxSeccompAction as A;
    let data = || match errno_ret {
        None => Ok(EPERM),
        Some(v) if v <= ret::DATA => Ok(v),
        Some(value) => Err(SeccompError::ErrnoOutOfRange {
            field: field.to_owned(),
            value,
        }),
    };
    if errno_ret.is_some() && !matches!(action, A::ScmpActErrno | A::ScmpActTrace) {
        warnings.push(format!("{field}: ignored for {action}"));
    }
    Ok(match action {
        A::ScmpActKill | A::ScmpActKillThread => ret::KILL_THREAD,
        A::ScmpActKillProcess => ret::KILL_PROCESS,
        A::ScmpActTrap => ret::TRAP,
        A::ScmpActErrno => ret::ERRNO | data()?,
        A::ScmpActNotify => ret::USER_NOTIF,
        A::ScmpActTrace => ret::TRACE | data()?,
        A::ScmpActLog => ret::LOG,
        A::ScmpActAllow => ret::ALLOW,
    })
}

fn cmp_op(op: LinuxSeccompOperator) -> CmpOp {
    use LinuxSeccompOperator as O;
    match op {
        O::ScmpCmpNe => CmpOp::Ne,
        O::ScmpCmpLt => CmpOp::Lt,
        O::ScmpCmpLe => CmpOp::Le,
        O::ScmpCmpEq => CmpOp::Eq,
        O::ScmpCmpGe => CmpOp::Ge,
        O::ScmpCmpGt => CmpOp::Gt,
        O::ScmpCmpMaskedEq => CmpOp::MaskedEq,
    }
}

/// The admitted conventions, target first.
fn admitted(seccomp: &LinuxSeccomp, arch: Arch, warnings: &mut Vec<String>) -> Vec<SubArch> {
    let mut subs = vec![arch.sub_arch()];
    for (k, a) in seccomp.architectures().iter().flatten().enumerate() {
        match SubArch::from_oci(*a, arch) {
            Some(s) if !subs.contains(&s) => subs.push(s),
            Some(_) => {}
            None => warnings.push(format!(
                "linux.seccomp.architectures[{k}]: no syscall table for {a}; its calls get the \
                 bad-arch action (kill process)"
            )),
        }
    }
    subs
}

fn flags_of(seccomp: &LinuxSeccomp) -> u32 {
    seccomp.flags().iter().flatten().fold(0, |acc, f| {
        acc | match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => filter_flags::TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => filter_flags::LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => filter_flags::SPEC_ALLOW,
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => {
                filter_flags::WAIT_KILLABLE_RECV
            }
        }
    })
}

/// The rule of `syscalls[i]`.
fn rule_of(sc: &LinuxSyscall, i: usize, warnings: &mut Vec<String>) -> Result<Rule, SeccompError> {
    let field = format!("linux.seccomp.syscalls[{i}]");
    let value = action_value(
        sc.action(),
        sc.errno_ret(),
        &format!("{field}.errnoRet"),
        warnings,
    )?;
    let mut conds = Vec::new();
    let mut seen = BTreeSet::new();
    let mut duplicate = false;
    for (j, a) in sc.args().iter().flatten().enumerate() {
        let index = match u8::try_from(a.index()) {
            Ok(ix) if ix < 6 => ix,
            _ => {
                return Err(SeccompError::ArgIndex {
                    field: format!("{field}.args[{j}].index"),
                    index: a.index(),
                })
            }
        };
        duplicate |= !seen.insert(index);
        conds.push(Cond {
            index,
            op: cmp_op(a.op()),
            value: a.value(),
            value_two: a.value_two().unwrap_or(0),
        });
    }
    if duplicate {
        warnings.push(format!(
            "{field}.args: several conditions on one argument are ANDed (libseccomp); runc \
             would OR them as separate rules"
        ));
    }
    Ok(Rule { ret: value, conds })
}

/// Order one syscall's rules (most restrictive first, stable), drop what can never decide.
fn finish(mut rules: Vec<Rule>, default: u32) -> Vec<Rule> {
    rules.sort_by_key(|r| action_rank(r.ret));
    if let Some(p) = rules.iter().position(|r| r.conds.is_empty()) {
        rules.truncate(p + 1);
    }
    while rules.last().is_some_and(|r| r.ret == default) {
        rules.pop();
    }
    rules
}

/// Compile `seccomp` into a classic BPF program for `arch`.
///
/// Semantics (libseccomp/runc unless noted):
/// - The target architecture is always admitted; `architectures` adds more. Calls from any other
///   convention get [`BAD_ARCH_ACTION`] (`SECCOMP_RET_KILL_PROCESS`; libseccomp's default is
///   `SCMP_ACT_KILL`, which only kills the thread: we kill the process, strictly stronger).
///   Listed architectures without a syscall table here (ARM, MIPS, ...) are warned about and
///   stay unadmitted.
/// - On x86-64, numbers with the x32 bit go to the x32 rules when `SCMP_ARCH_X32` is admitted,
///   else to the bad-arch action; `nr == -1` is let through to the default action (libseccomp).
/// - Names are resolved per convention; a name unknown on every admitted convention is skipped
///   with a warning (runc skips unknown names too).
/// - `SCMP_ACT_ERRNO` and `SCMP_ACT_TRACE` without `errnoRet` use `EPERM` (runc).
/// - Conditions of one rule are ANDed, also several on the same argument (libseccomp); runc
///   instead splits those into separate, ORed rules, so such a rule gets a warning.
/// - Several rules matching one call: the most restrictive action wins, in the kernel's own order
///   for stacked filters (KILL_PROCESS, KILL_THREAD, TRAP, ERRNO, USER_NOTIF, TRACE, LOG, ALLOW);
///   ties go to the earlier rule. This is order-independent and never lets a conditional ALLOW
///   override an unconditional denial (where libseccomp would refuse such a profile).
/// - Arguments are compared as full 64-bit values (high half, then low half), as libseccomp does
///   on 64-bit conventions; on i386 the kernel zero-extends, so this is the same.
/// - `SCMP_ACT_NOTIFY` is refused as default action (as runc does). When a rule notifies, the
///   flags gain `NEW_LISTENER` (and `TSYNC_ESRCH` if `TSYNC` is set, which the kernel requires);
///   `WAIT_KILLABLE_RECV` without any notifying rule is dropped with a warning.
/// - Not done: runc's "ENOSYS stub" (calls newer than the profile fail with ENOSYS instead of
///   the default action); here they get the default action.
pub fn compile(seccomp: &LinuxSeccomp, arch: Arch) -> Result<Compiled, SeccompError> {
    let mut warnings = Vec::new();
    if seccomp.default_action() == LinuxSeccompAction::ScmpActNotify {
        return Err(SeccompError::NotifyDefault);
    }
    let default = action_value(
        seccomp.default_action(),
        seccomp.default_errno_ret(),
        "linux.seccomp.defaultErrnoRet",
        &mut warnings,
    )?;
    let subs = admitted(seccomp, arch, &mut warnings);
    let mut per_sub: Vec<BTreeMap<u32, Vec<Rule>>> = vec![BTreeMap::new(); subs.len()];
    let mut notify = false;
    for (i, sc) in seccomp.syscalls().iter().flatten().enumerate() {
        let rule = rule_of(sc, i, &mut warnings)?;
        notify |= sc.action() == LinuxSeccompAction::ScmpActNotify;
        for (j, name) in sc.names().iter().enumerate() {
            let mut known = false;
            for (s, sub) in subs.iter().enumerate() {
                if let Some(nr) = sub.syscall_nr(name) {
                    known = true;
                    per_sub[s].entry(nr).or_default().push(rule.clone());
                }
            }
            if !known {
                let on: Vec<&str> = subs.iter().map(|s| s.scmp_name()).collect();
                warnings.push(format!(
                    "linux.seccomp.syscalls[{i}].names[{j}]: unknown syscall {name:?} on {}, \
                     skipped",
                    on.join(", ")
                ));
            }
        }
    }
    let arches: Vec<ArchRules> = subs
        .iter()
        .zip(per_sub)
        .map(|(&sub, map)| ArchRules {
            sub,
            syscalls: map
                .into_iter()
                .map(|(nr, rules)| (nr, finish(rules, default)))
                .filter(|(_, rules)| !rules.is_empty())
                .collect(),
        })
        .collect();
    let program = generate(&arches, default, BAD_ARCH_ACTION);
    if program.len() > MAX_INSNS {
        return Err(SeccompError::TooLong(program.len()));
    }
    if let Err(e) = validate(&program) {
        return Err(SeccompError::Internal(e.to_string()));
    }
    let mut flags = flags_of(seccomp);
    if notify {
        flags |= filter_flags::NEW_LISTENER;
        if flags & filter_flags::TSYNC != 0 {
            flags |= filter_flags::TSYNC_ESRCH;
        }
    } else if flags & filter_flags::WAIT_KILLABLE_RECV != 0 {
        warnings.push(
            "linux.seccomp.flags: SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV dropped: no rule uses \
             SCMP_ACT_NOTIFY (the kernel refuses it without a listener)"
                .to_owned(),
        );
        flags &= !filter_flags::WAIT_KILLABLE_RECV;
    }
    Ok(Compiled {
        program,
        flags,
        needs_notify_listener: notify,
        warnings,
    })
}
