//! Applying `linux.resources` to the container's cgroup at create time. The cgroup crate enforces
//! every resource it knows or refuses it with the field named; nothing is silently ignored.
//!
//! Device rules get what runc adds after the spec's own rules: the standard devices every container
//! needs (null, zero, full, random, urandom, tty, ptmx, pts) and one rule per `linux.devices`
//! entry, so that a spec's "deny all" does not take /dev/null away.

use oci_spec::runtime::{
    LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxResources, Spec,
};

/// (type, major, minor, access) of the devices every container may use.
const DEFAULT_ALLOWED: &[(LinuxDeviceType, Option<i64>, Option<i64>, &str)] = &[
    (LinuxDeviceType::C, None, None, "m"),
    (LinuxDeviceType::B, None, None, "m"),
    (LinuxDeviceType::C, Some(1), Some(3), "rwm"),
    (LinuxDeviceType::C, Some(1), Some(5), "rwm"),
    (LinuxDeviceType::C, Some(1), Some(7), "rwm"),
    (LinuxDeviceType::C, Some(1), Some(8), "rwm"),
    (LinuxDeviceType::C, Some(1), Some(9), "rwm"),
    (LinuxDeviceType::C, Some(5), Some(0), "rwm"),
    (LinuxDeviceType::C, Some(5), Some(1), "rwm"),
    (LinuxDeviceType::C, Some(5), Some(2), "rwm"),
    (LinuxDeviceType::C, Some(136), None, "rwm"),
];

fn rule(
    typ: LinuxDeviceType,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut b = LinuxDeviceCgroupBuilder::default()
        .allow(true)
        .typ(typ)
        .access(access.to_owned());
    if let Some(m) = major {
        b = b.major(m);
    }
    if let Some(m) = minor {
        b = b.minor(m);
    }
    b.build()
        .expect("a device rule with every field set builds")
}

/// The resources to apply: the spec's, with the device rules completed.
///
/// As in runc, the device rules are always the spec's (an absent list and `[]` alike: none),
/// starting from deny-all, followed by the defaults and `linux.devices`: a container gets the
/// standard devices and its own, and nothing else unless its rules allow it.
pub fn effective(spec: &Spec) -> Option<LinuxResources> {
    let linux = spec.linux().as_ref()?;
    let mut res = linux.resources().clone().unwrap_or_default();
    {
        let mut devs = res.devices().clone().unwrap_or_default();
        devs.extend(
            DEFAULT_ALLOWED
                .iter()
                .map(|(t, ma, mi, a)| rule(*t, *ma, *mi, a)),
        );
        for d in linux.devices().clone().unwrap_or_default() {
            let t = match d.typ() {
                LinuxDeviceType::B => LinuxDeviceType::B,
                LinuxDeviceType::P => continue,
                _ => LinuxDeviceType::C,
            };
            devs.push(rule(t, Some(d.major()), Some(d.minor()), "rwm"));
        }
        res.set_devices(Some(devs));
    }
    Some(res)
}

/// The resources a rootless container asks for: the spec's, without device rules (they need
/// privileges a rootless runtime lacks; runc ignores them too, and the container reaches only
/// the devices the user can reach anyway).
pub fn rootless(spec: &Spec) -> LinuxResources {
    let mut res = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().clone())
        .unwrap_or_default();
    res.set_devices(None);
    res
}
