//! Classic BPF as seccomp sees it: the instruction type (`struct sock_filter`), the input
//! (`struct seccomp_data`), the `SECCOMP_RET_*` values, the raw encoding the kernel takes, and an
//! interpreter for checking programs without installing them.
//!
//! What it must never do: make policy decisions. The interpreter is a test and fuzzing aid; the
//! kernel's own verifier and interpreter are what run in production.

/// One classic BPF instruction, laid out as the kernel's `struct sock_filter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SockFilter {
    /// Opcode (`BPF_CLASS | BPF_SIZE/OP | BPF_MODE/SRC`).
    pub code: u16,
    /// Jump offset if the condition is true (relative to the next instruction).
    pub jt: u8,
    /// Jump offset if the condition is false.
    pub jf: u8,
    /// Constant operand.
    pub k: u32,
}

impl SockFilter {
    /// A non-jump instruction.
    pub const fn stmt(code: u16, k: u32) -> SockFilter {
        SockFilter {
            code,
            jt: 0,
            jf: 0,
            k,
        }
    }

    /// A conditional jump.
    pub const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> SockFilter {
        SockFilter { code, jt, jf, k }
    }
}

/// The input of a seccomp filter, as the kernel's `struct seccomp_data`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeccompData {
    /// System call number (including `__X32_SYSCALL_BIT` for x32 calls).
    pub nr: i32,
    /// `AUDIT_ARCH_*` of the calling convention.
    pub arch: u32,
    /// Instruction pointer at the time of the call.
    pub instruction_pointer: u64,
    /// The six system call arguments, zero-extended to 64 bits.
    pub args: [u64; 6],
}

impl SeccompData {
    /// The 64-byte little-endian image of `struct seccomp_data` that `BPF_ABS` loads index into.
    fn bytes(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[0..4].copy_from_slice(&self.nr.to_le_bytes());
        b[4..8].copy_from_slice(&self.arch.to_le_bytes());
        b[8..16].copy_from_slice(&self.instruction_pointer.to_le_bytes());
        for (i, a) in self.args.iter().enumerate() {
            b[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        b
    }
}

/// Opcode pieces (`linux/bpf_common.h`).
pub mod op {
    /// `BPF_LD | BPF_W | BPF_ABS`: A = u32 at offset k of `seccomp_data`.
    pub const LD_W_ABS: u16 = 0x20;
    /// `BPF_LD | BPF_IMM`: A = k.
    pub const LD_IMM: u16 = 0x00;
    /// `BPF_ALU | BPF_AND | BPF_K`: A &= k.
    pub const ALU_AND_K: u16 = 0x04 | 0x50;
    /// `BPF_JMP | BPF_JA`: pc += k.
    pub const JA: u16 = 0x05;
    /// `BPF_JMP | BPF_JEQ | BPF_K`.
    pub const JEQ_K: u16 = 0x05 | 0x10;
    /// `BPF_JMP | BPF_JGT | BPF_K`.
    pub const JGT_K: u16 = 0x05 | 0x20;
    /// `BPF_JMP | BPF_JGE | BPF_K`.
    pub const JGE_K: u16 = 0x05 | 0x30;
    /// `BPF_JMP | BPF_JSET | BPF_K`.
    pub const JSET_K: u16 = 0x05 | 0x40;
    /// `BPF_RET | BPF_K`: return k.
    pub const RET_K: u16 = 0x06;
}

/// `SECCOMP_RET_*` action values (`linux/seccomp.h`).
pub mod ret {
    /// Kill the whole process (with a core dump and SIGSYS status).
    pub const KILL_PROCESS: u32 = 0x8000_0000;
    /// Kill the calling thread.
    pub const KILL_THREAD: u32 = 0x0000_0000;
    /// Send SIGSYS to the thread.
    pub const TRAP: u32 = 0x0003_0000;
    /// Fail with the errno in the low 16 bits.
    pub const ERRNO: u32 = 0x0005_0000;
    /// Hand the call to the user-space listener.
    pub const USER_NOTIF: u32 = 0x7fc0_0000;
    /// Notify a ptrace tracer, with the low 16 bits as message.
    pub const TRACE: u32 = 0x7ff0_0000;
    /// Allow, after logging.
    pub const LOG: u32 = 0x7ffc_0000;
    /// Allow.
    pub const ALLOW: u32 = 0x7fff_0000;
    /// The mask of the action part of a return value.
    pub const ACTION_FULL: u32 = 0xffff_0000;
    /// The mask of the data part of a return value.
    pub const DATA: u32 = 0x0000_ffff;
}

/// `BPF_MAXINSNS`: the kernel refuses longer classic programs.
pub const MAX_INSNS: usize = 4096;

/// The kernel's precedence of an action: lower is more restrictive. When several stacked filters
/// return different actions, the kernel keeps the most restrictive one; the compiler uses the
/// same order between rules of one syscall.
pub fn action_rank(value: u32) -> i32 {
    // The kernel compares `ACTION_FULL` parts as signed integers (KILL_PROCESS is negative).
    (value & ret::ACTION_FULL) as i32
}

/// The raw encoding the kernel takes in `struct sock_fprog.filter`: 8 bytes per instruction,
/// `code` (u16), `jt`, `jf`, `k` (u32), in native byte order.
pub fn program_bytes(prog: &[SockFilter]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prog.len() * 8);
    for insn in prog {
        out.extend_from_slice(&insn.code.to_ne_bytes());
        out.push(insn.jt);
        out.push(insn.jf);
        out.extend_from_slice(&insn.k.to_ne_bytes());
    }
    out
}

/// Why a program would not pass the kernel's checks (a subset of `bpf_check_classic` and
/// `seccomp_check_filter` for the instructions this crate emits).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidProgram {
    /// Empty or longer than [`MAX_INSNS`].
    #[error("program length {0} is outside 1..={MAX_INSNS}")]
    Length(usize),
    /// A jump leaves the program.
    #[error("instruction {0}: jump out of the program")]
    JumpOutOfRange(usize),
    /// A load outside `seccomp_data` or not 4-byte aligned.
    #[error("instruction {0}: load offset {1} outside seccomp_data")]
    BadLoad(usize, u32),
    /// An opcode the interpreter does not know.
    #[error("instruction {0}: unsupported opcode {1:#x}")]
    Opcode(usize, u16),
    /// The last instruction is not a return.
    #[error("the last instruction is not a return")]
    NoFinalReturn,
}

/// Check `prog` the way the kernel would before installing it (for the opcodes listed in [`op`]).
pub fn validate(prog: &[SockFilter]) -> Result<(), InvalidProgram> {
    if prog.is_empty() || prog.len() > MAX_INSNS {
        return Err(InvalidProgram::Length(prog.len()));
    }
    let len = prog.len();
    for (pc, insn) in prog.iter().enumerate() {
        let in_range = |off: u64| pc as u64 + 1 + off < len as u64;
        match insn.code {
            op::LD_W_ABS if insn.k >= 64 || insn.k % 4 != 0 => {
                return Err(InvalidProgram::BadLoad(pc, insn.k))
            }
            op::LD_W_ABS | op::LD_IMM | op::ALU_AND_K | op::RET_K => {}
            op::JA if !in_range(u64::from(insn.k)) => {
                return Err(InvalidProgram::JumpOutOfRange(pc))
            }
            op::JA => {}
            op::JEQ_K | op::JGT_K | op::JGE_K | op::JSET_K => {
                if !in_range(u64::from(insn.jt)) || !in_range(u64::from(insn.jf)) {
                    return Err(InvalidProgram::JumpOutOfRange(pc));
                }
            }
            other => return Err(InvalidProgram::Opcode(pc, other)),
        }
    }
    if prog[len - 1].code != op::RET_K {
        return Err(InvalidProgram::NoFinalReturn);
    }
    Ok(())
}

/// Run `prog` on `data` and return the filter's verdict, like the kernel's classic BPF
/// interpreter would. A program that [`validate`] rejects yields `KILL_PROCESS` (the kernel would
/// not have installed it).
pub fn evaluate(prog: &[SockFilter], data: &SeccompData) -> u32 {
    if validate(prog).is_err() {
        return ret::KILL_PROCESS;
    }
    let bytes = data.bytes();
    let mut a: u32 = 0;
    let mut pc = 0usize;
    // Classic BPF only jumps forward, so this loop ends within `prog.len()` steps.
    while let Some(insn) = prog.get(pc) {
        pc += 1;
        let cond = match insn.code {
            op::LD_W_ABS => {
                let k = insn.k as usize;
                a = u32::from_le_bytes([bytes[k], bytes[k + 1], bytes[k + 2], bytes[k + 3]]);
                continue;
            }
            op::LD_IMM => {
                a = insn.k;
                continue;
            }
            op::ALU_AND_K => {
                a &= insn.k;
                continue;
            }
            op::RET_K => return insn.k,
            op::JA => {
                pc += insn.k as usize;
                continue;
            }
            op::JEQ_K => a == insn.k,
            op::JGT_K => a > insn.k,
            op::JGE_K => a >= insn.k,
            op::JSET_K => a & insn.k != 0,
            _ => return ret::KILL_PROCESS,
        };
        pc += usize::from(if cond { insn.jt } else { insn.jf });
    }
    ret::KILL_PROCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_is_eight_bytes_per_insn() {
        let prog = [SockFilter::jump(op::JEQ_K, 0x0102_0304, 1, 2)];
        let b = program_bytes(&prog);
        assert_eq!(b.len(), 8);
        assert_eq!(&b[0..2], &op::JEQ_K.to_ne_bytes());
        assert_eq!((b[2], b[3]), (1, 2));
        assert_eq!(&b[4..8], &0x0102_0304u32.to_ne_bytes());
    }

    #[test]
    fn interpreter_basics() {
        let prog = [
            SockFilter::stmt(op::LD_W_ABS, 0),
            SockFilter::jump(op::JEQ_K, 39, 0, 1),
            SockFilter::stmt(op::RET_K, ret::ERRNO | 1),
            SockFilter::stmt(op::LD_W_ABS, 20),
            SockFilter::stmt(op::ALU_AND_K, 0xff),
            SockFilter::jump(op::JSET_K, 0x80, 1, 0),
            SockFilter::stmt(op::JA, 1),
            SockFilter::stmt(op::RET_K, ret::TRAP),
            SockFilter::stmt(op::RET_K, ret::ALLOW),
        ];
        validate(&prog).unwrap();
        let mut d = SeccompData {
            nr: 39,
            ..Default::default()
        };
        assert_eq!(evaluate(&prog, &d), ret::ERRNO | 1);
        d.nr = 1;
        assert_eq!(evaluate(&prog, &d), ret::ALLOW);
        d.args[0] = 0x80_0000_0000;
        assert_eq!(evaluate(&prog, &d), ret::TRAP);
    }

    #[test]
    fn invalid_programs_are_rejected() {
        assert_eq!(validate(&[]), Err(InvalidProgram::Length(0)));
        let jump_out = [SockFilter::jump(op::JEQ_K, 0, 1, 0)];
        assert_eq!(validate(&jump_out), Err(InvalidProgram::JumpOutOfRange(0)));
        let bad_load = [
            SockFilter::stmt(op::LD_W_ABS, 64),
            SockFilter::stmt(op::RET_K, 0),
        ];
        assert_eq!(validate(&bad_load), Err(InvalidProgram::BadLoad(0, 64)));
        let no_ret = [SockFilter::stmt(op::LD_IMM, 0)];
        assert_eq!(validate(&no_ret), Err(InvalidProgram::NoFinalReturn));
        assert_eq!(
            evaluate(&no_ret, &SeccompData::default()),
            ret::KILL_PROCESS
        );
    }

    #[test]
    fn ranks_follow_the_kernel() {
        let order = [
            ret::KILL_PROCESS,
            ret::KILL_THREAD,
            ret::TRAP,
            ret::ERRNO | 5,
            ret::USER_NOTIF,
            ret::TRACE,
            ret::LOG,
            ret::ALLOW,
        ];
        assert!(order
            .windows(2)
            .all(|w| action_rank(w[0]) < action_rank(w[1])));
    }
}
