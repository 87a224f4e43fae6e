//! The guest agent binary and what it needs in the initramfs. Zero set-up: after the README's
//! `cargo build --release`, `moat-agent` sits next to `moat`, `moat-runtime` and the shim, and is
//! found there without an environment variable. A dynamically linked agent (the ordinary build)
//! gets its program interpreter and shared libraries copied into the initramfs at the paths it
//! asks for; a static one (musl, or `+crt-static`) goes in alone.
//!
//! The library list comes from the agent's own interpreter (`ld.so --list`, what `ldd` runs):
//! it applies the same search rules the guest's loader will, and the agent is moat's own binary,
//! never a container's.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Result, VmError};

/// Where the agent is looked for, after `$MOAT_AGENT_BIN`: beside the running executable, then
/// the install locations.
const INSTALLED: &[&str] = &["/usr/local/lib/moat/moat-agent", "/usr/lib/moat/moat-agent"];

/// The guest agent: `$MOAT_AGENT_BIN`, else `moat-agent` next to the running program (a cargo
/// build puts every binary of the workspace in one directory), else an installed one.
pub fn find_agent() -> Result<PathBuf> {
    find_program("moat-agent", "MOAT_AGENT_BIN", INSTALLED)
}

/// moat's program `name`: `$env`, else beside the running program (or, for a test binary in
/// cargo's `deps`, in the directory above), else at one of `installed`.
pub(crate) fn find_program(name: &str, env: &str, installed: &[&str]) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env).map(PathBuf::from) {
        if p.is_file() {
            return Ok(p);
        }
        return Err(VmError::AgentBinary {
            reason: format!("${env} names {}, which is not a file", p.display()),
            path: p,
        });
    }
    let mut dirs = invoked_dirs();
    let above_deps: Vec<PathBuf> = dirs
        .iter()
        .filter(|d| d.file_name().is_some_and(|n| n == "deps"))
        .filter_map(|d| d.parent().map(Path::to_path_buf))
        .collect();
    dirs.extend(above_deps);
    dirs.iter()
        .map(|d| d.join(name))
        .chain(installed.iter().map(PathBuf::from))
        .find(|p| p.is_file())
        .ok_or_else(|| VmError::AgentBinary {
            path: PathBuf::from(name),
            reason: format!(
                "not found in {dirs:?} nor at {}: build the workspace (`cargo build --release` \
                 puts it beside moat), install it there, or set {env}",
                installed.join(" or ")
            ),
        })
}

/// Directories the running program was started from: that of `/proc/self/exe` when it is a real
/// path, and that of `argv[0]` (resolved through `PATH` when it has no slash). The second matters
/// because `moat-runtime` re-executes itself from a sealed copy (CVE-2019-5736), after which
/// `/proc/self/exe` names the copy, not the build or install directory.
fn invoked_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![];
    if let Ok(exe) = std::env::current_exe() {
        if exe.is_file() {
            dirs.extend(exe.parent().map(Path::to_path_buf));
        }
    }
    if let Some(arg0) = std::env::args_os().next().map(PathBuf::from) {
        let found = if arg0.components().count() > 1 {
            Some(arg0)
        } else {
            std::env::var_os("PATH").and_then(|path| {
                std::env::split_paths(&path)
                    .map(|d| d.join(&arg0))
                    .find(|p| p.is_file())
            })
        };
        if let Some(dir) = found.and_then(|p| {
            std::fs::canonicalize(p)
                .ok()?
                .parent()
                .map(Path::to_path_buf)
        }) {
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
    }
    dirs
}

/// The program interpreter (`PT_INTERP`) a 64-bit little-endian ELF file asks for, if any.
pub fn interpreter(elf: &[u8]) -> Option<String> {
    let rd = |at: usize, n: usize| -> Option<u64> {
        let b = elf.get(at..at.checked_add(n)?)?;
        Some(
            b.iter()
                .rev()
                .fold(0u64, |acc, x| (acc << 8) | u64::from(*x)),
        )
    };
    let (phoff, phentsize, phnum) = (rd(0x20, 8)?, rd(0x36, 2)?, rd(0x38, 2)?);
    (0..phnum).find_map(|i| {
        let at = usize::try_from(phoff.checked_add(i.checked_mul(phentsize)?)?).ok()?;
        if rd(at, 4)? != 3 {
            return None;
        }
        let (off, size) = (rd(at + 8, 8)? as usize, rd(at + 32, 8)? as usize);
        let raw = elf.get(off..off.checked_add(size)?)?;
        let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
        std::str::from_utf8(&raw[..end]).ok().map(str::to_owned)
    })
}

/// `interp --list agent`, its output read to the end. In a process that reaps every child of its
/// own (the shim is a child subreaper whose reaper thread waits for any pid), the exit status may
/// be taken before `wait` gets it (`ECHILD`): the listing is then judged by its output alone (an
/// empty one is a failure).
fn list_libraries(interp: &str, agent: &Path) -> std::io::Result<std::process::Output> {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    let mut child = Command::new(interp)
        .arg("--list")
        .arg(agent)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stderr = child.stderr.take();
    let errors = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(e) = stderr.as_mut() {
            let _ = e.read_to_end(&mut buf);
        }
        buf
    });
    let mut stdout = Vec::new();
    if let Some(mut o) = child.stdout.take() {
        o.read_to_end(&mut stdout)?;
    }
    let stderr = errors.join().unwrap_or_default();
    let status = match child.wait() {
        Ok(st) => st,
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ECHILD as i32) => {
            std::process::ExitStatus::from_raw(if stdout.is_empty() { 1 << 8 } else { 0 })
        }
        Err(e) => return Err(e),
    };
    Ok(std::process::Output {
        status,
        stdout,
        stderr,
    })
}

/// The files a dynamically linked `agent` needs at run time, as (absolute path in the guest, path
/// on the host to read it from): its interpreter and every shared library it loads. Empty for a
/// static agent.
pub fn runtime_files(agent: &Path, elf: &[u8]) -> Result<Vec<(String, PathBuf)>> {
    let Some(interp) = interpreter(elf) else {
        return Ok(vec![]);
    };
    let fail = |reason: String| VmError::AgentBinary {
        path: agent.to_path_buf(),
        reason,
    };
    let out = list_libraries(&interp, agent)
        .map_err(|e| fail(format!("run its interpreter {interp} --list: {e}")))?;
    if !out.status.success() {
        return Err(fail(format!(
            "{interp} --list failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let mut files = vec![(interp.clone(), PathBuf::from(&interp))];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)", "/lib64/ld-linux-x86-64.so.2 (0x...)",
        // "linux-vdso.so.1 (0x...)" (in the kernel: nothing to copy).
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/')),
        };
        match path {
            Some("not") => return Err(fail(format!("a library is missing: {}", line.trim()))),
            Some(p) if p.starts_with('/') && !files.iter().any(|(g, _)| g == p) => {
                files.push((p.to_owned(), PathBuf::from(p)))
            }
            _ => {}
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_binary_brings_its_interpreter_and_libc() {
        let me = std::env::current_exe().unwrap();
        let elf = std::fs::read(&me).unwrap();
        let interp = interpreter(&elf).expect("the test binary is dynamically linked");
        assert!(
            interp.starts_with('/') && interp.contains("ld-linux"),
            "{interp}"
        );
        let files = runtime_files(&me, &elf).unwrap();
        assert_eq!(files[0].0, interp);
        assert!(
            files
                .iter()
                .any(|(g, h)| g.contains("libc.so") && h.is_file()),
            "{files:?}"
        );
    }

    #[test]
    fn a_static_binary_goes_alone() {
        let Ok(elf) = std::fs::read("/bin/busybox") else {
            eprintln!("no /bin/busybox (busybox-static): skipped");
            return;
        };
        if interpreter(&elf).is_none() {
            assert!(runtime_files(Path::new("/bin/busybox"), &elf)
                .unwrap()
                .is_empty());
        }
        assert_eq!(interpreter(b"\x7fELF short"), None);
    }
}
