//! Code generation: turns the resolved rules of each calling convention into one classic BPF
//! program. The program is built backwards (last instruction first), so every jump target is
//! already placed when its jump is emitted and its distance is known: a conditional jump whose
//! target is more than 255 instructions away goes through a `JA` trampoline (32-bit offset).
//!
//! Layout: load `arch`, one `JEQ` per admitted `AUDIT_ARCH_*`, the bad-arch return, then one block
//! per architecture: load `nr`, a binary search tree over the syscall numbers that have rules
//! (leaves are short `JEQ` chains), each syscall's rule chain next to its leaf.
//!
//! What it must never do: decide policy. Which action wins for a syscall is settled in
//! `compile`; this module only encodes the ordered rules it is given.

use std::collections::HashMap;

use crate::arch::{SubArch, X32_SYSCALL_BIT};
use crate::bpf::{op, SockFilter};

/// Comparison operators on a 64-bit argument (libseccomp's `SCMP_CMP_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Ne,
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
    /// `(arg & value) == value_two`.
    MaskedEq,
}

/// One condition on one argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cond {
    pub index: u8,
    pub op: CmpOp,
    pub value: u64,
    pub value_two: u64,
}

/// A rule of one syscall: all conditions hold → return `ret`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    pub ret: u32,
    pub conds: Vec<Cond>,
}

/// The rules of one calling convention: `(nr, rules in evaluation order)`, sorted by `nr`.
pub(crate) struct ArchRules {
    pub sub: SubArch,
    pub syscalls: Vec<(u32, Vec<Rule>)>,
}

/// Offsets in `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARGS: u32 = 16;

/// Most syscalls per leaf of the search tree.
const LEAF: usize = 4;

/// An instruction position, counted from the end of the program (the backwards index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Label(usize);

struct Emitter {
    rev: Vec<SockFilter>,
    rets: HashMap<u32, Label>,
}

impl Emitter {
    /// Jump offset from an instruction emitted now to `target`.
    fn dist(&self, target: Label) -> usize {
        self.rev.len() - target.0 - 1
    }

    fn push(&mut self, insn: SockFilter) -> Label {
        self.rev.push(insn);
        Label(self.rev.len() - 1)
    }

    fn stmt(&mut self, code: u16, k: u32) -> Label {
        self.push(SockFilter::stmt(code, k))
    }

    /// A return of `value`, shared with an earlier identical one when it is still in reach.
    fn ret(&mut self, value: u32) -> Label {
        if let Some(&l) = self.rets.get(&value) {
            if self.dist(l) <= usize::from(u8::MAX) {
                return l;
            }
        }
        let l = self.stmt(op::RET_K, value);
        self.rets.insert(value, l);
        l
    }

    /// An unconditional long jump to `target`.
    fn ja(&mut self, target: Label) -> Label {
        let k = self.dist(target) as u32;
        self.stmt(op::JA, k)
    }

    /// A conditional jump, with trampolines for targets out of 8-bit reach.
    fn cond(&mut self, code: u16, k: u32, mut t: Label, mut f: Label) -> Label {
        let max = usize::from(u8::MAX);
        loop {
            let (dt, df) = (self.dist(t), self.dist(f));
            if dt <= max && df <= max {
                return self.push(SockFilter::jump(code, k, dt as u8, df as u8));
            }
            if dt > max {
                t = self.ja(t);
            } else {
                f = self.ja(f);
            }
        }
    }

    /// Emit `cond` on the argument; jump to `t` when it holds, `f` otherwise. Returns the entry.
    fn arg_cond(&mut self, c: &Cond, t: Label, f: Label) -> Label {
        let lo_off = OFF_ARGS + 8 * u32::from(c.index);
        let hi_off = lo_off + 4;
        let (hi, lo) = ((c.value >> 32) as u32, c.value as u32);
        match c.op {
            CmpOp::Eq => self.eq64(lo_off, hi, lo, t, f),
            CmpOp::Ne => self.eq64(lo_off, hi, lo, f, t),
            CmpOp::Gt => self.gt64(lo_off, hi, lo, op::JGT_K, t, f),
            CmpOp::Ge => self.gt64(lo_off, hi, lo, op::JGE_K, t, f),
            // a < v  ⇔  !(a >= v);  a <= v  ⇔  !(a > v)
            CmpOp::Lt => self.gt64(lo_off, hi, lo, op::JGE_K, f, t),
            CmpOp::Le => self.gt64(lo_off, hi, lo, op::JGT_K, f, t),
            CmpOp::MaskedEq => {
                let (dhi, dlo) = ((c.value_two >> 32) as u32, c.value_two as u32);
                self.cond(op::JEQ_K, dlo, t, f);
                self.stmt(op::ALU_AND_K, lo);
                let ld_lo = self.stmt(op::LD_W_ABS, lo_off);
                self.cond(op::JEQ_K, dhi, ld_lo, f);
                self.stmt(op::ALU_AND_K, hi);
                self.stmt(op::LD_W_ABS, hi_off)
            }
        }
    }

    /// `arg == (hi:lo)`: both halves equal.
    fn eq64(&mut self, lo_off: u32, hi: u32, lo: u32, t: Label, f: Label) -> Label {
        self.cond(op::JEQ_K, lo, t, f);
        let ld_lo = self.stmt(op::LD_W_ABS, lo_off);
        self.cond(op::JEQ_K, hi, ld_lo, f);
        self.stmt(op::LD_W_ABS, lo_off + 4)
    }

    /// `arg > (hi:lo)` (or `>=` with `lo_op = JGE`): the high halves decide unless equal.
    fn gt64(&mut self, lo_off: u32, hi: u32, lo: u32, lo_op: u16, t: Label, f: Label) -> Label {
        self.cond(lo_op, lo, t, f);
        let ld_lo = self.stmt(op::LD_W_ABS, lo_off);
        let hi_eq = self.cond(op::JEQ_K, hi, ld_lo, f);
        self.cond(op::JGT_K, hi, t, hi_eq);
        self.stmt(op::LD_W_ABS, lo_off + 4)
    }

    /// The rule chain of one syscall; falls back to `default`. Returns its entry.
    fn body(&mut self, rules: &[Rule], default: u32) -> Label {
        let mut next: Option<Label> = None;
        for rule in rules.iter().rev() {
            let mut entry = self.ret(rule.ret);
            for c in rule.conds.iter().rev() {
                // Without a next rule, re-fetch the default return each time: it must stay in
                // reach (a fresh one is emitted when the shared one is too far).
                let miss = match next {
                    Some(l) => l,
                    None => self.ret(default),
                };
                entry = self.arg_cond(c, entry, miss);
            }
            next = Some(entry);
        }
        next.unwrap_or_else(|| self.ret(default))
    }

    /// Binary search over `syscalls` (sorted by number); `A` holds `nr`.
    fn tree(&mut self, syscalls: &[(u32, Vec<Rule>)], default: u32) -> Label {
        if syscalls.len() <= LEAF {
            let bodies: Vec<Label> = syscalls
                .iter()
                .rev()
                .map(|(_, rules)| self.body(rules, default))
                .collect();
            let mut miss = self.ret(default);
            for ((nr, _), body) in syscalls.iter().rev().zip(bodies) {
                miss = self.cond(op::JEQ_K, *nr, body, miss);
            }
            return miss;
        }
        let mid = syscalls.len() / 2;
        let right = self.tree(&syscalls[mid..], default);
        let left = self.tree(&syscalls[..mid], default);
        self.cond(op::JGE_K, syscalls[mid].0, right, left)
    }

    /// `ld nr` + search tree for one convention.
    fn dispatch(&mut self, syscalls: &[(u32, Vec<Rule>)], default: u32) -> Label {
        let entry = self.tree(syscalls, default);
        if entry.0 + 1 != self.rev.len() {
            // The tree's entry is a shared return further on: reach it explicitly.
            self.ja(entry);
        }
        self.stmt(op::LD_W_ABS, OFF_NR)
    }
}

/// Build the whole program. `arches` lists the admitted conventions, native first; calls from any
/// other convention return `bad_arch`; calls without a rule return `default`.
pub(crate) fn generate(arches: &[ArchRules], default: u32, bad_arch: u32) -> Vec<SockFilter> {
    let mut e = Emitter {
        rev: Vec::new(),
        rets: HashMap::new(),
    };
    let find = |sub: SubArch| arches.iter().find(|a| a.sub == sub);
    // The distinct AUDIT_ARCH values in order of first appearance (x86-64 and x32 share one).
    let mut audits: Vec<u32> = Vec::new();
    for a in arches {
        if !audits.contains(&a.sub.audit_arch()) {
            audits.push(a.sub.audit_arch());
        }
    }
    let mut blocks = Vec::new();
    for &audit in audits.iter().rev() {
        let entry = if audit == SubArch::X86_64.audit_arch() {
            x86_64_block(
                &mut e,
                find(SubArch::X86_64),
                find(SubArch::X32),
                default,
                bad_arch,
            )
        } else {
            let a = arches.iter().find(|a| a.sub.audit_arch() == audit);
            e.dispatch(a.map_or(&[][..], |a| &a.syscalls), default)
        };
        blocks.push((audit, entry));
    }
    let mut miss = e.stmt(op::RET_K, bad_arch);
    for (audit, entry) in blocks {
        miss = e.cond(op::JEQ_K, audit, entry, miss);
    }
    e.stmt(op::LD_W_ABS, OFF_ARCH);
    e.rev.reverse();
    e.rev
}

/// The `AUDIT_ARCH_X86_64` block: numbers with the x32 bit go to the x32 rules if x32 is
/// admitted, else to the bad-arch action (except `nr == -1`, which libseccomp lets through so
/// that tracers can skip a call); the others go to the x86-64 rules if x86-64 is admitted.
fn x86_64_block(
    e: &mut Emitter,
    x86_64: Option<&ArchRules>,
    x32: Option<&ArchRules>,
    default: u32,
    bad_arch: u32,
) -> Label {
    let hi_path = match x32 {
        Some(a) => e.tree(&a.syscalls, default),
        None => {
            let bad = e.ret(bad_arch);
            let dflt = e.ret(default);
            e.cond(op::JEQ_K, u32::MAX, dflt, bad)
        }
    };
    let lo_path = match x86_64 {
        Some(a) => e.tree(&a.syscalls, default),
        None => e.ret(bad_arch),
    };
    e.cond(op::JGE_K, X32_SYSCALL_BIT, hi_path, lo_path);
    e.stmt(op::LD_W_ABS, OFF_NR)
}
