//! Scheduling attributes of the calling thread that `nix` does not wrap: `sched_setattr(2)`,
//! `ioprio_set(2)` and `set_mempolicy(2)`. Each applies to the caller only (pid 0), as the
//! container's init does just before `execve`; values are passed through unchecked (the caller
//! validates them against the spec), and the errno is returned as is.

use nix::errno::Errno;

use crate::Result;

/// `struct sched_attr` (the first version, 48 bytes: no utilisation clamps).
pub use libc::sched_attr as SchedAttr;

/// A zeroed [`SchedAttr`] with its `size` filled in.
pub fn sched_attr() -> SchedAttr {
    SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        sched_policy: 0,
        sched_flags: 0,
        sched_nice: 0,
        sched_priority: 0,
        sched_runtime: 0,
        sched_deadline: 0,
        sched_period: 0,
    }
}

/// `sched_setattr(0, attr, 0)`: policy, nice, priority, flags and deadline parameters of the
/// calling thread.
pub fn sched_setattr(attr: &SchedAttr) -> Result<()> {
    // SAFETY: `attr` points to a valid, initialised `struct sched_attr` whose `size` field is its
    // size; the kernel only reads it during the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_setattr,
            0 as libc::pid_t,
            attr as *const SchedAttr,
            0 as libc::c_uint,
        )
    };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// `IOPRIO_CLASS_*` of `linux/ioprio.h`.
pub const IOPRIO_CLASS_RT: u32 = 1;
pub const IOPRIO_CLASS_BE: u32 = 2;
pub const IOPRIO_CLASS_IDLE: u32 = 3;
const IOPRIO_CLASS_SHIFT: u32 = 13;
const IOPRIO_WHO_PROCESS: libc::c_int = 1;

/// `ioprio_set(IOPRIO_WHO_PROCESS, 0, IOPRIO_PRIO_VALUE(class, level))` on the calling thread.
pub fn ioprio_set(class: u32, level: u32) -> Result<()> {
    let value = (class << IOPRIO_CLASS_SHIFT) | level;
    // SAFETY: three integer arguments; the kernel reads no memory of ours.
    let r = unsafe {
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            0 as libc::c_int,
            value as libc::c_int,
        )
    };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// `set_mempolicy(mode | flags, nodemask, maxnode)` for the calling thread. `nodes` is the node
/// mask as 64-bit words (bit n of the mask = node n); empty passes a NULL mask.
pub fn set_mempolicy(mode_and_flags: i32, nodes: &[u64]) -> Result<()> {
    let (ptr, maxnode) = if nodes.is_empty() {
        (std::ptr::null(), 0)
    } else {
        // maxnode counts bits, and the kernel reads `maxnode - 1` of them (a historical off by one).
        (nodes.as_ptr(), nodes.len() as libc::c_ulong * 64 + 1)
    };
    // SAFETY: `ptr` is NULL with maxnode 0, or points to `nodes`, whose `nodes.len() * 64` bits
    // cover the `maxnode - 1` bits the kernel reads; `nodes` outlives the call.
    let r = unsafe { libc::syscall(libc::SYS_set_mempolicy, mode_and_flags, ptr, maxnode) };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// `personality(persona)`: set the execution domain and flags of the calling process; returns
/// the previous value. `nix`'s wrapper drops the domain bits (`PER_LINUX32` is no named flag).
pub fn set_personality(persona: u32) -> Result<u32> {
    // SAFETY: one integer argument; the kernel reads no memory of ours.
    let r = unsafe { libc::personality(persona as libc::c_ulong) };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(r as u32)
    }
}

/// The current personality of the calling process (`personality(0xffffffff)`).
pub fn personality() -> Result<u32> {
    // SAFETY: one integer argument; 0xffffffff only queries the current value.
    let r = unsafe { libc::personality(0xffff_ffff) };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(r as u32)
    }
}
