//! Giving an idle VM sandbox's cold pages back to the host (proactive reclaim).
//!
//! A clone's QEMU maps the guest's RAM from its template file: every page the guest read while
//! it resumed and started the container stays mapped in QEMU (31 MiB of PSS for an idle clone
//! here), as do the pages of QEMU's binary that ran once (device set-up, the incoming
//! migration: 24 MiB with its libraries). The kernel would reclaim those clean file pages under
//! memory pressure; until then they count against the sandbox. Free page reporting cannot help:
//! QEMU 7.2 discards reported pages of a file-backed RAM by punching holes into the file, which
//! is the template every clone shares.
//!
//! So the process that follows a sandbox (the `moat run` monitor, a foreground `moat-runtime
//! run`, a detached terminal relay, the shim of a VM pod, or for a container `moat-runtime
//! start`ed without any of them a small `moat-runtime vm-reclaim` process) runs [`spawn`] (or
//! [`run`]): a thread that looks
//! at QEMU's CPU time every [`CHECK_FIRST`] until it has reclaimed once, then every
//! [`CHECK_EVERY`], and when QEMU used less than [`IDLE_BELOW`] of a core since the last look,
//! asks the kernel (`process_madvise(MADV_PAGEOUT)`) to reclaim the file-backed pages of QEMU
//! and of the calling process. Once per idle period: a sandbox that gets busy again is
//! reclaimed again only after it went idle again. What the guest touches again comes back from
//! the page cache or the file (a minor or major fault); pages another process maps too (the
//! template pages other clones use, shared libraries) are left alone by the kernel. Anonymous
//! memory (pages the guest wrote, TCG's translation buffer) stays where there is no swap; on a
//! host with swap the mappings QEMU can write (the guest's RAM among them) are left out, so
//! guest memory is never pushed to swap by this. `MOAT_VM_RECLAIM=0` turns it off.
//!
//! What it must never do: change what any process reads (it only drops clean pages the kernel
//! can read back), or outlive the QEMU it watches.

use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::unistd::Pid;

/// The first looks, until the sandbox was found idle once.
pub const CHECK_FIRST: Duration = Duration::from_secs(2);
/// The looks after that.
pub const CHECK_EVERY: Duration = Duration::from_secs(10);
/// Idle: QEMU used less than this share of one core since the last look (an idle TCG
/// sandbox uses ~2 %).
pub const IDLE_BELOW: f64 = 0.05;

/// Whether reclaim is on (`MOAT_VM_RECLAIM` is not `0`).
pub fn enabled() -> bool {
    std::env::var_os("MOAT_VM_RECLAIM").is_none_or(|v| v != "0")
}

/// Start the reclaim thread for the sandbox whose QEMU is `qemu_pid` (nothing when reclaim is
/// off). The thread ends when QEMU exits.
pub fn spawn(qemu_pid: u32) {
    if !enabled() {
        return;
    }
    use nix::sys::signal::{SigSet, SigmaskHow};
    // Signals are the spawning thread's (it may read them from a signalfd): the thread starts
    // with all of them blocked, so none is ever delivered to it.
    let old = SigSet::all().thread_swap_mask(SigmaskHow::SIG_BLOCK).ok();
    let _ = std::thread::Builder::new()
        .name("moat-reclaim".into())
        .spawn(move || run(qemu_pid, None));
    if let Some(old) = old {
        let _ = old.thread_set_mask();
    }
}

/// The reclaim loop for the sandbox whose QEMU is `qemu_pid`, in this thread, until QEMU exits
/// (at once when reclaim is off, QEMU is gone, or `start_time` is given and is not QEMU's: its
/// pid was reused).
pub fn run(qemu_pid: u32, start_time: Option<u64>) {
    if !enabled() {
        return;
    }
    let pid = qemu_pid as i32;
    let Ok(qemu) = moat_sys::process::pidfd_open(Pid::from_raw(pid)) else {
        return;
    };
    if start_time.is_some_and(|t| moat_sys::process::start_time(pid) != Some(t)) {
        return;
    }
    let me = moat_sys::process::pidfd_open(Pid::this()).ok();
    let swap = host_has_swap();
    let mut last = cpu_ticks(qemu_pid);
    let mut reclaimed = false;
    loop {
        let wait = if reclaimed { CHECK_EVERY } else { CHECK_FIRST };
        let mut fds = [PollFd::new(qemu.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, timeout) {
            // QEMU exited.
            Ok(n) if n > 0 => return,
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return,
        }
        let Some(now) = cpu_ticks(qemu_pid) else {
            return;
        };
        let used = now.saturating_sub(last.unwrap_or(now)) as f64 / ticks_per_second();
        last = Some(now);
        if used / wait.as_secs_f64() >= IDLE_BELOW {
            reclaimed = false;
            continue;
        }
        if !reclaimed {
            let _ = pageout(qemu.as_fd(), qemu_pid, swap);
            if let Some(me) = &me {
                let _ = pageout(me.as_fd(), std::process::id(), swap);
            }
            reclaimed = true;
        }
    }
}

/// Ask the kernel to reclaim the file-backed pages of the process `pidfd` refers to (`pid`, for
/// its maps); the bytes advised. With `swap` on the host, mappings the process can write are
/// left out: a private file mapping holds the pages it wrote as anonymous memory (a clone's
/// guest RAM: what the guest wrote), and reclaim would send those to swap.
pub fn pageout(pidfd: BorrowedFd<'_>, pid: u32, swap: bool) -> std::io::Result<usize> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let mut advised = 0;
    // One range per call: a range the kernel refuses (locked, or unmapped since `maps` was
    // read) must not stop the others.
    for range in file_ranges(&maps, swap) {
        match moat_sys::process::process_madvise_pageout(pidfd, &[range]) {
            Ok(n) => advised += n,
            // The process is gone (`pid` may even be another process's by now).
            Err(nix::errno::Errno::ESRCH) => break,
            Err(_) => {}
        }
    }
    Ok(advised)
}

/// Whether the host has swap (`SwapTotal` above 0).
fn host_has_swap() -> bool {
    std::fs::read_to_string("/proc/meminfo").is_ok_and(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("SwapTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .is_some_and(|kib| kib > 0)
    })
}

/// The mappings of `/proc/PID/maps` text that are backed by a file (QEMU's guest RAM from the
/// template, binaries, libraries), without the writable ones when `no_writable`: start and
/// length.
fn file_ranges(maps: &str, no_writable: bool) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let range = f.next()?;
            let perms = f.next()?;
            let path = f.nth(3)?;
            if !path.starts_with('/') || (no_writable && perms.as_bytes().get(1) == Some(&b'w')) {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            let (a, b) = (
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            );
            (b > a).then_some((a, b - a))
        })
        .collect()
}

/// User and system CPU time of process `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    moat_sys::process::cpu_time(pid as i32)
}

fn ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_ranges_are_the_mappings_with_a_path() {
        let maps = "\
55d0c0000000-55d0c0010000 r--p 00000000 08:01 123 /usr/bin/qemu-system-x86_64
7f0000000000-7f0010000000 rw-p 00000000 08:01 456 /var/lib/moat/vm/templates/k/memory
7f0010000000-7f0010001000 rw-p 00000000 00:00 0 
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
7f0020000000-7f0020001000 rw-s 00000000 00:01 789 /memfd:tcg (deleted)
";
        assert_eq!(
            file_ranges(maps, false),
            vec![
                (0x55d0c0000000, 0x10000),
                (0x7f0000000000, 0x10000000),
                (0x7f0020000000, 0x1000)
            ]
        );
        assert_eq!(file_ranges(maps, true), vec![(0x55d0c0000000, 0x10000)]);
    }

    #[test]
    fn cpu_ticks_of_this_process() {
        let t = cpu_ticks(std::process::id()).expect("our own /proc/self/stat");
        let start = std::time::Instant::now();
        while cpu_ticks(std::process::id()).unwrap() == t {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no CPU time counted"
            );
            std::hint::black_box(0u64);
        }
    }

    /// Reclaiming our own file pages works (it needs CAP_SYS_NICE: root).
    #[test]
    fn pageout_of_this_process() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: process_madvise needs CAP_SYS_NICE");
            return;
        }
        let me = moat_sys::process::pidfd_open(Pid::this()).unwrap();
        let n = pageout(me.as_fd(), std::process::id(), false).expect("process_madvise");
        assert!(n > 0);
    }
}
