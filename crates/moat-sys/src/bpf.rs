//! The `bpf(2)` calls used to load and attach cgroup v2 device programs
//! (`BPF_PROG_TYPE_CGROUP_DEVICE`): load, attach, query, detach, get-fd-by-id. The instruction
//! stream itself is built (safely) by `moat-cgroups`; this module only carries it to the kernel.
//!
//! What it must never do: interpret the program or decide policy.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::{Errno, Result};

/// `BPF_PROG_TYPE_CGROUP_DEVICE`.
pub const PROG_TYPE_CGROUP_DEVICE: u32 = 15;
/// `BPF_CGROUP_DEVICE` attach type.
pub const ATTACH_CGROUP_DEVICE: u32 = 6;
/// `BPF_F_ALLOW_MULTI`: several programs may be attached to the same cgroup; all must allow.
pub const F_ALLOW_MULTI: u32 = 2;

const CMD_PROG_LOAD: libc::c_long = 5;
const CMD_PROG_ATTACH: libc::c_long = 8;
const CMD_PROG_DETACH: libc::c_long = 9;
const CMD_PROG_GET_FD_BY_ID: libc::c_long = 13;
const CMD_PROG_QUERY: libc::c_long = 16;

/// One eBPF instruction, laid out as the kernel's `struct bpf_insn`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    /// Opcode.
    pub code: u8,
    /// `dst_reg` in the low nibble, `src_reg` in the high nibble.
    pub regs: u8,
    /// Signed offset (jump distance or memory offset).
    pub off: i16,
    /// Signed immediate.
    pub imm: i32,
}

impl Insn {
    /// Build an instruction from its parts.
    pub const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        Insn {
            code,
            regs: (dst & 0x0f) | (src << 4),
            off,
            imm,
        }
    }
}

// Every attr struct below is laid out without implicit padding (checked by the tests): the
// kernel refuses non-zero bytes after the fields a command uses, and padding is uninitialised.
#[repr(C, align(8))]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C, align(8))]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
    // Explicit so that no padding byte reaches the kernel: it checks these are zero.
    relative_fd: u32,
    expected_revision: u64,
}

#[repr(C, align(8))]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

#[repr(C, align(8))]
#[derive(Default)]
struct GetFdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
    _pad: u32,
}

/// Call `bpf(cmd, attr, size_of(attr))`.
fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> Result<libc::c_long> {
    // SAFETY: `attr` is a valid, exclusively borrowed, fully initialised `#[repr(C)]` struct that
    // matches the prefix of the kernel's `union bpf_attr` member for `cmd`; the size passed is its
    // exact size, so the kernel reads (and for queries writes) only within it. Any pointers inside
    // it are set by the callers to buffers that outlive this call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    Errno::result(r)
}

/// Load a `BPF_PROG_TYPE_CGROUP_DEVICE` program. When `log` is given, the verifier's log is
/// written into it (NUL-terminated) so that a refusal can be explained.
pub fn prog_load_cgroup_device(
    insns: &[Insn],
    license: &CStr,
    log: Option<&mut [u8]>,
) -> Result<OwnedFd> {
    let mut attr = ProgLoadAttr {
        prog_type: PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: u32::try_from(insns.len()).map_err(|_| Errno::E2BIG)?,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..Default::default()
    };
    attr.prog_name[..4].copy_from_slice(b"moat");
    if let Some(log) = log {
        attr.log_level = 1;
        attr.log_size = u32::try_from(log.len()).map_err(|_| Errno::E2BIG)?;
        attr.log_buf = log.as_mut_ptr() as u64;
    }
    let fd = sys_bpf(CMD_PROG_LOAD, &mut attr)?;
    // SAFETY: on success BPF_PROG_LOAD returns a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Attach `prog` to the cgroup directory `cgroup` with `attach_type` and `flags`.
pub fn prog_attach(
    cgroup: BorrowedFd<'_>,
    prog: BorrowedFd<'_>,
    attach_type: u32,
    flags: u32,
) -> Result<()> {
    let mut attr = AttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type,
        attach_flags: flags,
        ..Default::default()
    };
    sys_bpf(CMD_PROG_ATTACH, &mut attr).map(drop)
}

/// Detach `prog` (attached with `attach_type`) from the cgroup directory `cgroup`.
pub fn prog_detach(cgroup: BorrowedFd<'_>, prog: BorrowedFd<'_>, attach_type: u32) -> Result<()> {
    let mut attr = AttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type,
        ..Default::default()
    };
    sys_bpf(CMD_PROG_DETACH, &mut attr).map(drop)
}

/// The ids of the programs attached directly to `cgroup` with `attach_type`.
pub fn prog_query(cgroup: BorrowedFd<'_>, attach_type: u32) -> Result<Vec<u32>> {
    let mut ids = vec![0u32; 64];
    loop {
        let mut attr = QueryAttr {
            target_fd: cgroup.as_raw_fd() as u32,
            attach_type,
            prog_ids: ids.as_mut_ptr() as u64,
            prog_cnt: ids.len() as u32,
            ..Default::default()
        };
        match sys_bpf(CMD_PROG_QUERY, &mut attr) {
            Ok(_) => {
                ids.truncate(attr.prog_cnt as usize);
                return Ok(ids);
            }
            // The kernel sets prog_cnt to the number it has when the buffer is too small.
            Err(Errno::ENOSPC) if (attr.prog_cnt as usize) > ids.len() => {
                ids.resize(attr.prog_cnt as usize, 0);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Open a file descriptor on the loaded program with id `id`.
pub fn prog_get_fd_by_id(id: u32) -> Result<OwnedFd> {
    let mut attr = GetFdAttr {
        prog_id: id,
        ..Default::default()
    };
    let fd = sys_bpf(CMD_PROG_GET_FD_BY_ID, &mut attr)?;
    // SAFETY: on success BPF_PROG_GET_FD_BY_ID returns a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insn_layout_matches_the_kernel() {
        assert_eq!(std::mem::size_of::<Insn>(), 8);
        let i = Insn::new(0x61, 2, 1, 4, 0);
        assert_eq!(i.regs, 0x12);
        assert_eq!(std::mem::size_of::<ProgLoadAttr>(), 72);
        assert_eq!(std::mem::size_of::<QueryAttr>(), 32);
        // No implicit padding anywhere: every byte passed to the kernel is initialised.
        assert_eq!(std::mem::size_of::<AttachAttr>(), 32);
        assert_eq!(std::mem::size_of::<GetFdAttr>(), 16);
    }
}
