//! The table of OCI / fstab mount options: which set or clear a `MS_*` flag, which are propagation
//! changes, and which are passed to the filesystem as data. Kept as data in one place, as runc's
//! `mountPropagationMapping` and crun's `propagation_flags` are.

use nix::mount::MsFlags;

/// What one option string means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountOpt {
    /// Set (true) or clear (false) a flag.
    Flag(MsFlags, bool),
    /// A propagation change applied after the mount.
    Propagation(MsFlags),
    /// Recursive read-only / read-write (applied with mount_setattr semantics: here as a recursive remount).
    RecursiveRo(bool),
    /// Filesystem-specific data (`size=64m`, `mode=755`, `newinstance`, ...).
    Data(String),
    /// Accepted and ignored (runc ignores them too): `defaults`, `tmpcopyup` handled elsewhere.
    Ignore,
}

const FLAGS: &[(&str, MsFlags, bool)] = &[
    ("ro", MsFlags::MS_RDONLY, true),
    ("rw", MsFlags::MS_RDONLY, false),
    ("nosuid", MsFlags::MS_NOSUID, true),
    ("suid", MsFlags::MS_NOSUID, false),
    ("nodev", MsFlags::MS_NODEV, true),
    ("dev", MsFlags::MS_NODEV, false),
    ("noexec", MsFlags::MS_NOEXEC, true),
    ("exec", MsFlags::MS_NOEXEC, false),
    ("sync", MsFlags::MS_SYNCHRONOUS, true),
    ("async", MsFlags::MS_SYNCHRONOUS, false),
    ("dirsync", MsFlags::MS_DIRSYNC, true),
    ("remount", MsFlags::MS_REMOUNT, true),
    ("mand", MsFlags::MS_MANDLOCK, true),
    ("nomand", MsFlags::MS_MANDLOCK, false),
    ("noatime", MsFlags::MS_NOATIME, true),
    ("atime", MsFlags::MS_NOATIME, false),
    ("nodiratime", MsFlags::MS_NODIRATIME, true),
    ("diratime", MsFlags::MS_NODIRATIME, false),
    ("relatime", MsFlags::MS_RELATIME, true),
    ("norelatime", MsFlags::MS_RELATIME, false),
    ("strictatime", MsFlags::MS_STRICTATIME, true),
    ("nostrictatime", MsFlags::MS_STRICTATIME, false),
    ("lazytime", MsFlags::MS_LAZYTIME, true),
    ("nolazytime", MsFlags::MS_LAZYTIME, false),
    ("silent", MsFlags::MS_SILENT, true),
    ("loud", MsFlags::MS_SILENT, false),
    ("bind", MsFlags::MS_BIND, true),
    (
        "rbind",
        MsFlags::from_bits_truncate(MsFlags::MS_BIND.bits() | MsFlags::MS_REC.bits()),
        true,
    ),
];

const PROPAGATION: &[(&str, MsFlags)] = &[
    ("private", MsFlags::MS_PRIVATE),
    (
        "rprivate",
        MsFlags::from_bits_truncate(MsFlags::MS_PRIVATE.bits() | MsFlags::MS_REC.bits()),
    ),
    ("shared", MsFlags::MS_SHARED),
    (
        "rshared",
        MsFlags::from_bits_truncate(MsFlags::MS_SHARED.bits() | MsFlags::MS_REC.bits()),
    ),
    ("slave", MsFlags::MS_SLAVE),
    (
        "rslave",
        MsFlags::from_bits_truncate(MsFlags::MS_SLAVE.bits() | MsFlags::MS_REC.bits()),
    ),
    ("unbindable", MsFlags::MS_UNBINDABLE),
    (
        "runbindable",
        MsFlags::from_bits_truncate(MsFlags::MS_UNBINDABLE.bits() | MsFlags::MS_REC.bits()),
    ),
];

/// Interpret one option. Never fails: anything unknown is filesystem data, which the kernel
/// accepts or refuses (and then the mount's error names the option).
pub fn parse_option(o: &str) -> Option<MountOpt> {
    if let Some((_, f, set)) = FLAGS.iter().find(|(n, _, _)| *n == o) {
        return Some(MountOpt::Flag(*f, *set));
    }
    if let Some(p) = propagation(o) {
        return Some(MountOpt::Propagation(p));
    }
    Some(match o {
        "rro" => MountOpt::RecursiveRo(true),
        "rrw" => MountOpt::RecursiveRo(false),
        "defaults" | "tmpcopyup" | "" => MountOpt::Ignore,
        _ => MountOpt::Data(o.to_owned()),
    })
}

/// A propagation keyword (`rprivate`, `shared`, ...) as flags.
pub fn propagation(o: &str) -> Option<MsFlags> {
    PROPAGATION.iter().find(|(n, _)| *n == o).map(|(_, f)| *f)
}

/// All options of one mount, folded.
#[derive(Debug, Clone)]
pub struct ParsedOptions {
    pub flags: MsFlags,
    pub propagation: Vec<MsFlags>,
    pub data: Vec<String>,
    pub recursive_ro: bool,
}

impl ParsedOptions {
    pub fn parse(opts: &[String]) -> ParsedOptions {
        let mut p = ParsedOptions {
            flags: MsFlags::empty(),
            propagation: vec![],
            data: vec![],
            recursive_ro: false,
        };
        for o in opts {
            match parse_option(o) {
                Some(MountOpt::Flag(f, true)) => p.flags.insert(f),
                Some(MountOpt::Flag(f, false)) => p.flags.remove(f),
                Some(MountOpt::Propagation(f)) => p.propagation.push(f),
                Some(MountOpt::RecursiveRo(v)) => p.recursive_ro = v,
                Some(MountOpt::Data(d)) => p.data.push(d),
                Some(MountOpt::Ignore) | None => {}
            }
        }
        p
    }

    pub fn is_bind(&self) -> bool {
        self.flags.contains(MsFlags::MS_BIND)
    }

    pub fn data_string(&self) -> Option<String> {
        (!self.data.is_empty()).then(|| self.data.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_flags_and_data() {
        let p = ParsedOptions::parse(&[
            "nosuid".into(),
            "ro".into(),
            "size=65536k".into(),
            "rslave".into(),
            "rw".into(),
        ]);
        assert!(p.flags.contains(MsFlags::MS_NOSUID));
        assert!(!p.flags.contains(MsFlags::MS_RDONLY));
        assert_eq!(p.data_string().as_deref(), Some("size=65536k"));
        assert_eq!(p.propagation, vec![MsFlags::MS_SLAVE | MsFlags::MS_REC]);
    }

    #[test]
    fn rbind_is_recursive_bind() {
        let p = ParsedOptions::parse(&["rbind".into()]);
        assert!(p.is_bind() && p.flags.contains(MsFlags::MS_REC));
    }
}
