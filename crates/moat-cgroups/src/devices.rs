//! Device access rules (`linux.resources.devices`).
//!
//! The rules are first folded by [`DeviceRules::from_spec`], which emulates the v1 kernel's
//! device controller: start from deny-all (as runc does), a wildcard rule `a *:* rwm` resets the
//! default (deny-all or allow-all) and clears the exceptions, any other rule adds an exception to
//! the default or removes access bits from an exception with the same type and numbers. Type `a`
//! with numbers is expanded into `b` and `c`; `u` is `c`. FIFOs (`p`) are not mediated by the
//! device controller: an allow rule for them is a no-op and a deny rule is refused.
//!
//! The folded set is then enforced
//! - on v1 by writing `a` to `devices.deny` (or `devices.allow`) and one line per exception,
//! - on v2 by a `BPF_PROG_TYPE_CGROUP_DEVICE` program emitted by [`DeviceRules::program`]
//!   (the shape of runc's devicefilter) and attached with `BPF_F_ALLOW_MULTI`; programs that
//!   were attached to the directory before are detached after the new one is in place, so an
//!   update never leaves a window without a filter.
//!
//! What it must never do: widen access beyond the folded rule set.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use moat_sys::bpf::{self, Insn};
use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use crate::fsio::Writes;
use crate::{CgroupError, Result};

/// Access bits as the kernel's bpf device context encodes them.
pub const ACC_MKNOD: u8 = 1;
pub const ACC_READ: u8 = 2;
pub const ACC_WRITE: u8 = 4;
const ACC_ALL: u8 = ACC_MKNOD | ACC_READ | ACC_WRITE;

/// Device type of an exception (`BPF_DEVCG_DEV_BLOCK` = 1, `BPF_DEVCG_DEV_CHAR` = 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevType {
    Block = 1,
    Char = 2,
}

/// One exception to the default: `major`/`minor` `None` is the wildcard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exception {
    pub typ: DevType,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: u8,
}

/// The folded rule set: a default and the exceptions to it (all with the opposite verdict).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRules {
    pub default_allow: bool,
    pub exceptions: Vec<Exception>,
}

fn parse_access(s: Option<&str>, field: &str) -> Result<u8> {
    let s = s.unwrap_or("");
    if s.is_empty() {
        return Ok(ACC_ALL);
    }
    let mut acc = 0;
    for c in s.chars() {
        acc |= match c {
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            'm' => ACC_MKNOD,
            _ => {
                return Err(CgroupError::Invalid {
                    field: format!("{field}.access"),
                    reason: format!("{s:?} is not a combination of r, w and m"),
                })
            }
        };
    }
    Ok(acc)
}

fn parse_num(v: Option<i64>, field: &str) -> Result<Option<u32>> {
    match v {
        None | Some(-1) => Ok(None),
        Some(n) => u32::try_from(n)
            .map(Some)
            .map_err(|_| CgroupError::Invalid {
                field: field.into(),
                reason: format!("{n} is not a device number"),
            }),
    }
}

fn access_str(acc: u8) -> String {
    let mut s = String::new();
    for (bit, c) in [(ACC_READ, 'r'), (ACC_WRITE, 'w'), (ACC_MKNOD, 'm')] {
        if acc & bit != 0 {
            s.push(c);
        }
    }
    s
}

fn num_str(n: Option<u32>) -> String {
    n.map_or_else(|| "*".into(), |n| n.to_string())
}

impl DeviceRules {
    /// Fold the spec's rules, in order, starting from deny-all.
    pub fn from_spec(rules: &[LinuxDeviceCgroup]) -> Result<DeviceRules> {
        let mut st = DeviceRules {
            default_allow: false,
            exceptions: Vec::new(),
        };
        for (i, r) in rules.iter().enumerate() {
            let field = format!("linux.resources.devices[{i}]");
            let access = parse_access(r.access().as_deref(), &field)?;
            let major = parse_num(r.major(), &format!("{field}.major"))?;
            let minor = parse_num(r.minor(), &format!("{field}.minor"))?;
            let types: &[DevType] = match r.typ().unwrap_or_default() {
                LinuxDeviceType::A if major.is_none() && minor.is_none() && access == ACC_ALL => {
                    st.default_allow = r.allow();
                    st.exceptions.clear();
                    continue;
                }
                LinuxDeviceType::A => &[DevType::Block, DevType::Char],
                LinuxDeviceType::B => &[DevType::Block],
                LinuxDeviceType::C | LinuxDeviceType::U => &[DevType::Char],
                LinuxDeviceType::P if r.allow() => continue,
                LinuxDeviceType::P => {
                    return Err(CgroupError::Unsupported(format!(
                        "{field}: FIFOs (type p) are not mediated by the device cgroup; a deny rule cannot be enforced"
                    )))
                }
            };
            for &typ in types {
                st.add(typ, major, minor, access, r.allow());
            }
        }
        Ok(st)
    }

    fn add(&mut self, typ: DevType, major: Option<u32>, minor: Option<u32>, acc: u8, allow: bool) {
        let same = |e: &Exception| e.typ == typ && e.major == major && e.minor == minor;
        if allow != self.default_allow {
            match self.exceptions.iter_mut().find(|e| same(e)) {
                Some(e) => e.access |= acc,
                None => self.exceptions.push(Exception {
                    typ,
                    major,
                    minor,
                    access: acc,
                }),
            }
        } else {
            for e in self.exceptions.iter_mut().filter(|e| same(e)) {
                e.access &= !acc;
            }
            self.exceptions.retain(|e| e.access != 0);
        }
    }

    /// The v1 writes: (file, line) pairs, the reset first.
    pub fn v1_lines(&self) -> Vec<(&'static str, String)> {
        let (reset, exc) = if self.default_allow {
            ("devices.allow", "devices.deny")
        } else {
            ("devices.deny", "devices.allow")
        };
        let mut out = vec![(reset, "a".to_owned())];
        for e in &self.exceptions {
            let t = match e.typ {
                DevType::Block => 'b',
                DevType::Char => 'c',
            };
            let line = format!(
                "{t} {}:{} {}",
                num_str(e.major),
                num_str(e.minor),
                access_str(e.access)
            );
            out.push((exc, line));
        }
        out
    }

    /// The eBPF program: returns 1 (allow) or 0 (deny) for a `struct bpf_cgroup_dev_ctx`
    /// `{ u32 access_type /* access << 16 | type */; u32 major; u32 minor; }` in r1.
    /// On an allow-list, an exception matches when it grants every requested access bit; on a
    /// deny-list, when it covers any requested bit.
    pub fn program(&self) -> Vec<Insn> {
        let mut p = vec![
            Insn::new(LDX_W, 2, 1, 0, 0),
            Insn::new(ALU32_AND_K, 2, 0, 0, 0xffff),
            Insn::new(LDX_W, 3, 1, 0, 0),
            Insn::new(ALU32_RSH_K, 3, 0, 0, 16),
            Insn::new(LDX_W, 4, 1, 4, 0),
            Insn::new(LDX_W, 5, 1, 8, 0),
        ];
        let verdict = i32::from(!self.default_allow);
        for e in &self.exceptions {
            // Each block jumps to its own end when the exception does not match.
            let mut block = vec![
                Insn::new(JNE32_K, 2, 0, 0, e.typ as i32),
                Insn::new(ALU32_MOV_X, 1, 3, 0, 0),
                Insn::new(ALU32_AND_K, 1, 0, 0, i32::from(e.access)),
            ];
            if self.default_allow {
                block.push(Insn::new(JEQ32_K, 1, 0, 0, 0));
            } else {
                block.push(Insn::new(JNE32_X, 1, 3, 0, 0));
            }
            if let Some(m) = e.major {
                block.push(Insn::new(JNE32_K, 4, 0, 0, m as i32));
            }
            if let Some(m) = e.minor {
                block.push(Insn::new(JNE32_K, 5, 0, 0, m as i32));
            }
            block.push(Insn::new(ALU32_MOV_K, 0, 0, 0, verdict));
            block.push(Insn::new(EXIT, 0, 0, 0, 0));
            let n = block.len();
            for (i, insn) in block.iter_mut().enumerate() {
                if insn.code & 0x07 == CLASS_JMP32 {
                    insn.off = (n - i - 1) as i16;
                }
            }
            p.extend(block);
        }
        p.push(Insn::new(
            ALU32_MOV_K,
            0,
            0,
            0,
            i32::from(self.default_allow),
        ));
        p.push(Insn::new(EXIT, 0, 0, 0, 0));
        p
    }
}

pub(crate) const LDX_W: u8 = 0x61;
pub(crate) const ALU32_AND_K: u8 = 0x54;
pub(crate) const ALU32_RSH_K: u8 = 0x74;
pub(crate) const ALU32_MOV_K: u8 = 0xb4;
pub(crate) const ALU32_MOV_X: u8 = 0xbc;
pub(crate) const CLASS_JMP32: u8 = 0x06;
pub(crate) const JNE32_K: u8 = 0x56;
pub(crate) const JNE32_X: u8 = 0x5e;
pub(crate) const JEQ32_K: u8 = 0x16;
pub(crate) const EXIT: u8 = 0x95;

/// Enforce `rules` on the v1 devices directory `dir`.
pub(crate) fn apply_v1(w: &mut Writes, dir: &Path, rules: &[LinuxDeviceCgroup]) -> Result<()> {
    let folded = DeviceRules::from_spec(rules)?;
    for (file, line) in folded.v1_lines() {
        w.set(dir, file, &line, "linux.resources.devices")?;
    }
    Ok(())
}

/// Enforce `rules` on the cgroup2 directory `dir` with an attached eBPF program, replacing the
/// programs attached to it before.
pub(crate) fn apply_v2(w: &mut Writes, dir: &Path, rules: &[LinuxDeviceCgroup]) -> Result<()> {
    let folded = DeviceRules::from_spec(rules)?;
    if w.is_check() {
        return Ok(());
    }
    let insns = folded.program();
    let cg: OwnedFd = std::fs::File::open(dir)
        .map_err(|source| CgroupError::Read {
            path: dir.into(),
            source,
        })?
        .into();
    let bpf_err = |op, source, log: String| CgroupError::Bpf {
        op,
        path: dir.into(),
        source,
        log,
    };
    let old = bpf::prog_query(cg.as_fd(), bpf::ATTACH_CGROUP_DEVICE)
        .map_err(|e| bpf_err("query attached programs", e, String::new()))?;
    let mut log = vec![0u8; 1 << 16];
    let prog = bpf::prog_load_cgroup_device(&insns, c"Apache", Some(&mut log)).map_err(|e| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        let text = String::from_utf8_lossy(&log[..end]).trim().to_owned();
        let text = if text.is_empty() {
            text
        } else {
            format!("\nverifier log:\n{text}")
        };
        bpf_err("load device program", e, text)
    })?;
    bpf::prog_attach(
        cg.as_fd(),
        prog.as_fd(),
        bpf::ATTACH_CGROUP_DEVICE,
        bpf::F_ALLOW_MULTI,
    )
    .map_err(|e| bpf_err("attach device program", e, String::new()))?;
    for id in old {
        let fd = match bpf::prog_get_fd_by_id(id) {
            Ok(fd) => fd,
            // Detached and freed meanwhile.
            Err(moat_sys::Errno::ENOENT) => continue,
            Err(e) => return Err(bpf_err("open previous device program", e, String::new())),
        };
        match bpf::prog_detach(cg.as_fd(), fd.as_fd(), bpf::ATTACH_CGROUP_DEVICE) {
            Ok(()) | Err(moat_sys::Errno::ENOENT) => {}
            Err(e) => return Err(bpf_err("detach previous device program", e, String::new())),
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "devices_tests.rs"]
mod tests;
