//! Two ioctls a clone of a VM template needs and `nix` does not wrap: `RNDRESEEDCRNG`, which
//! makes the CRNG take fresh state from the input pool at once (a guest restored from
//! a template would otherwise keep producing the template's sequence until its next scheduled
//! reseed), and `BLKFLSBUF`, which drops a block device's stale page cache.

use std::os::fd::{AsRawFd, BorrowedFd};

use crate::Result;

// RNDRESEEDCRNG = _IO('R', 0x07) in <linux/random.h>.
nix::ioctl_none!(rnd_reseed_crng, b'R', 0x07);

// RNDADDENTROPY = _IOW('R', 0x03, int[2]) in <linux/random.h>: a `struct rand_pool_info`
// (entropy_count in bits, buf_size in bytes, then the bytes).
nix::ioctl_write_ptr_bad!(
    rnd_add_entropy,
    nix::request_code_write!(b'R', 0x03, std::mem::size_of::<[i32; 2]>()),
    u8
);

/// Add `bytes` to the input pool crediting them as full entropy (`fd`: /dev/random or
/// /dev/urandom): what a hardware RNG driver does. Enough of it (256 bits) initialises a CRNG
/// that was not yet ready and reseeds it. Needs CAP_SYS_ADMIN.
pub fn add_entropy(fd: BorrowedFd<'_>, bytes: &[u8]) -> Result<()> {
    let size = i32::try_from(bytes.len()).map_err(|_| crate::Errno::EINVAL)?;
    let bits = size.checked_mul(8).ok_or(crate::Errno::EINVAL)?;
    let mut info = Vec::with_capacity(8 + bytes.len());
    info.extend_from_slice(&bits.to_ne_bytes());
    info.extend_from_slice(&size.to_ne_bytes());
    info.extend_from_slice(bytes);
    // SAFETY: `info` is a complete `struct rand_pool_info` (two ints, then `buf_size` bytes),
    // alive for the call; the kernel only reads it.
    unsafe { rnd_add_entropy(fd.as_raw_fd(), info.as_ptr()) }.map(drop)
}

/// Force a reseed of the CRNG from the input pool (`fd`: /dev/random or /dev/urandom). Needs
/// CAP_SYS_ADMIN; ENODATA while the CRNG is not yet initialised.
pub fn reseed_crng(fd: BorrowedFd<'_>) -> Result<()> {
    // SAFETY: RNDRESEEDCRNG takes no argument; `fd` is a live descriptor borrowed for the call.
    unsafe { rnd_reseed_crng(fd.as_raw_fd()) }.map(drop)
}

// BLKFLSBUF = _IO(0x12, 97) in <linux/fs.h>.
nix::ioctl_none!(blk_flush_buffers, 0x12, 97);

/// Write back and drop the page cache of the block device `fd` (`blockdev --flushbufs`): what a
/// guest restored from a template cached of a disk that has since been replaced.
pub fn flush_block_buffers(fd: BorrowedFd<'_>) -> Result<()> {
    // SAFETY: BLKFLSBUF takes no argument; `fd` is a live descriptor borrowed for the call.
    unsafe { blk_flush_buffers(fd.as_raw_fd()) }.map(drop)
}
