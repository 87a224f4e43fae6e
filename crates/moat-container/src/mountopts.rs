//! The table of OCI / fstab mount options: which set or clear a `MS_*` flag, which are propagation
//! changes, which are recursive attributes of runtime-spec 1.1 (`rro`, `rnoatime`, ...: applied with
//! `mount_setattr(AT_RECURSIVE)` to the mount and every mount below it), and which are passed to
//! the filesystem as data. Kept as data in one place, as runc's `mountPropagationMapping` and
//! `recAttrFlags` and crun's `propagation_flags` are.

use moat_sys::mount::{
    MountAttr, MOUNT_ATTR_NOATIME, MOUNT_ATTR_NODEV, MOUNT_ATTR_NODIRATIME, MOUNT_ATTR_NOEXEC,
    MOUNT_ATTR_NOSUID, MOUNT_ATTR_NOSYMFOLLOW, MOUNT_ATTR_RDONLY, MOUNT_ATTR_RELATIME,
    MOUNT_ATTR_STRICTATIME, MOUNT_ATTR__ATIME,
};
use nix::mount::MsFlags;

/// What one option string means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountOpt {
    /// Set (true) or clear (false) a flag.
    Flag(MsFlags, bool),
    /// A propagation change applied after the mount.
    Propagation(MsFlags),
    /// A recursive attribute (`rnosuid`, ...): set (true) or clear (false) a `MOUNT_ATTR_*` bit.
    Recursive(u64, bool),
    /// A recursive atime mode (`rnoatime`, `rstrictatime`, `rrelatime`, ...): one
    /// `MOUNT_ATTR_*ATIME` value, replacing whatever atime mode each mount had.
    RecursiveAtime(u64),
    /// Filesystem-specific data (`size=64m`, `mode=755`, `newinstance`, ...).
    Data(String),
    /// `tmpcopyup`: a tmpfs starts with a copy of the directory it covers ([`crate::copyup`]).
    TmpCopyUp,
    /// Accepted and ignored: `defaults` (and the empty option) mean nothing.
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
    (
        "nosymfollow",
        MsFlags::from_bits_retain(libc::MS_NOSYMFOLLOW),
        true,
    ),
    (
        "symfollow",
        MsFlags::from_bits_retain(libc::MS_NOSYMFOLLOW),
        false,
    ),
    ("bind", MsFlags::MS_BIND, true),
    (
        "rbind",
        MsFlags::from_bits_truncate(MsFlags::MS_BIND.bits() | MsFlags::MS_REC.bits()),
        true,
    ),
];

/// Recursive attributes (runtime-spec 1.1): option, `MOUNT_ATTR_*` bit, set (true) or clear.
const RECURSIVE: &[(&str, u64, bool)] = &[
    ("rro", MOUNT_ATTR_RDONLY, true),
    ("rrw", MOUNT_ATTR_RDONLY, false),
    ("rnosuid", MOUNT_ATTR_NOSUID, true),
    ("rsuid", MOUNT_ATTR_NOSUID, false),
    ("rnodev", MOUNT_ATTR_NODEV, true),
    ("rdev", MOUNT_ATTR_NODEV, false),
    ("rnoexec", MOUNT_ATTR_NOEXEC, true),
    ("rexec", MOUNT_ATTR_NOEXEC, false),
    ("rnodiratime", MOUNT_ATTR_NODIRATIME, true),
    ("rdiratime", MOUNT_ATTR_NODIRATIME, false),
    ("rnosymfollow", MOUNT_ATTR_NOSYMFOLLOW, true),
    ("rsymfollow", MOUNT_ATTR_NOSYMFOLLOW, false),
];

/// Recursive atime modes: the kernel keeps one of relatime, noatime and strictatime per mount, so
/// each option names the mode it leaves. The "no" forms ask for the kernel's default (relatime),
/// as `atime` / `nostrictatime` do in mount(8); `rnorelatime` asks for full atime updates.
const RECURSIVE_ATIME: &[(&str, u64)] = &[
    ("rnoatime", MOUNT_ATTR_NOATIME),
    ("ratime", MOUNT_ATTR_RELATIME),
    ("rrelatime", MOUNT_ATTR_RELATIME),
    ("rnorelatime", MOUNT_ATTR_STRICTATIME),
    ("rstrictatime", MOUNT_ATTR_STRICTATIME),
    ("rnostrictatime", MOUNT_ATTR_RELATIME),
];

/// Every option this table knows, for `features`.
pub fn known_options() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = FLAGS.iter().map(|(n, _, _)| *n).collect();
    v.extend(PROPAGATION.iter().map(|(n, _)| *n));
    v.extend(RECURSIVE.iter().map(|(n, _, _)| *n));
    v.extend(RECURSIVE_ATIME.iter().map(|(n, _)| *n));
    v.extend(["defaults", "tmpcopyup"]);
    v.sort_unstable();
    v
}

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
    if let Some((_, a, set)) = RECURSIVE.iter().find(|(n, _, _)| *n == o) {
        return Some(MountOpt::Recursive(*a, *set));
    }
    if let Some((_, mode)) = RECURSIVE_ATIME.iter().find(|(n, _)| *n == o) {
        return Some(MountOpt::RecursiveAtime(*mode));
    }
    Some(match o {
        "tmpcopyup" => MountOpt::TmpCopyUp,
        "defaults" | "" => MountOpt::Ignore,
        _ => MountOpt::Data(o.to_owned()),
    })
}

/// A propagation keyword (`rprivate`, `shared`, ...) as flags.
pub fn propagation(o: &str) -> Option<MsFlags> {
    PROPAGATION.iter().find(|(n, _)| *n == o).map(|(_, f)| *f)
}

/// Whether a mount with these options receives mounts from its source later: its last
/// propagation option is `(r)slave` or `(r)shared` (a later option overrides an earlier one, as
/// the kernel applies them in order).
pub fn receives_propagation<S: AsRef<str>>(opts: &[S]) -> bool {
    opts.iter()
        .filter_map(|o| propagation(o.as_ref()))
        .last()
        .is_some_and(|p| p.intersects(MsFlags::MS_SLAVE | MsFlags::MS_SHARED))
}

/// All options of one mount, folded.
#[derive(Debug, Clone)]
pub struct ParsedOptions {
    pub flags: MsFlags,
    pub propagation: Vec<MsFlags>,
    pub data: Vec<String>,
    /// Recursive attributes to apply to the mount and its submounts, if any option asked for one.
    pub recursive: Option<MountAttr>,
    /// `tmpcopyup` was given.
    pub tmpcopyup: bool,
}

impl ParsedOptions {
    pub fn parse(opts: &[String]) -> ParsedOptions {
        let mut p = ParsedOptions {
            flags: MsFlags::empty(),
            propagation: vec![],
            data: vec![],
            recursive: None,
            tmpcopyup: false,
        };
        for o in opts {
            match parse_option(o) {
                Some(MountOpt::Flag(f, true)) => p.flags.insert(f),
                Some(MountOpt::Flag(f, false)) => p.flags.remove(f),
                Some(MountOpt::Propagation(f)) => p.propagation.push(f),
                Some(MountOpt::Recursive(a, set)) => {
                    let r = p.recursive.get_or_insert_with(MountAttr::default);
                    if set {
                        r.attr_set |= a;
                        r.attr_clr &= !a;
                    } else {
                        r.attr_clr |= a;
                        r.attr_set &= !a;
                    }
                }
                Some(MountOpt::RecursiveAtime(mode)) => {
                    // The last atime option wins; the whole mask is cleared so that the mode
                    // asked is exactly the mode left (no relatime kept beside noatime).
                    let r = p.recursive.get_or_insert_with(MountAttr::default);
                    r.attr_set = (r.attr_set & !MOUNT_ATTR__ATIME) | mode;
                    r.attr_clr |= MOUNT_ATTR__ATIME;
                }
                Some(MountOpt::Data(d)) => p.data.push(d),
                Some(MountOpt::TmpCopyUp) => p.tmpcopyup = true,
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
    fn the_last_propagation_option_decides_what_a_bind_receives() {
        assert!(receives_propagation(&["rbind", "rslave"]));
        assert!(receives_propagation(&["shared"]));
        assert!(receives_propagation(&["rprivate", "rshared"]));
        assert!(!receives_propagation(&["rshared", "rprivate"]));
        assert!(!receives_propagation(&["rbind", "ro"]));
        assert!(!receives_propagation(&["runbindable"]));
    }

    #[test]
    fn recursive_attrs_fold_and_atime_clears_the_whole_mask() {
        let p = ParsedOptions::parse(&["rro".into(), "rnosuid".into(), "rnoatime".into()]);
        let r = p.recursive.unwrap();
        assert_eq!(
            r.attr_set,
            MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOATIME
        );
        assert_eq!(r.attr_clr, MOUNT_ATTR__ATIME);
        let p = ParsedOptions::parse(&["rnoatime".into(), "rstrictatime".into(), "rrw".into()]);
        let r = p.recursive.unwrap();
        assert_eq!(r.attr_set, MOUNT_ATTR_STRICTATIME);
        assert_eq!(r.attr_clr, MOUNT_ATTR__ATIME | MOUNT_ATTR_RDONLY);
        assert!(ParsedOptions::parse(&["ro".into()]).recursive.is_none());
    }

    #[test]
    fn every_known_option_parses_to_something_but_data() {
        for o in known_options() {
            assert!(
                !matches!(parse_option(o), Some(MountOpt::Data(_)) | None),
                "{o}"
            );
        }
    }

    #[test]
    fn rbind_is_recursive_bind() {
        let p = ParsedOptions::parse(&["rbind".into()]);
        assert!(p.is_bind() && p.flags.contains(MsFlags::MS_REC));
    }
}
