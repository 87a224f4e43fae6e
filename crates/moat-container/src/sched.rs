//! The attributes of the container process that the kernel keeps per task and that survive
//! `execve`: `process.scheduler` (`sched_setattr`), `process.ioPriority` (`ioprio_set`),
//! `linux.personality` (`personality`) and `linux.memoryPolicy` (`set_mempolicy`).
//!
//! [`validate`] checks the values at `create` / `exec`, before anything exists on the host, and
//! names the field of a bad one; [`apply`] is called once by the init (of the container and of
//! every `exec`'d process), while it is still root with all capabilities and before seccomp is
//! installed, and names the field and the system call when the kernel refuses.
//!
//! What it must never do: apply a value it did not validate, or silently skip a field the spec
//! sets (a kernel without the system call is an error, not a no-op).

use oci_spec::runtime::{
    IOPriorityClass, LinuxMemoryPolicy, LinuxPersonality, LinuxPersonalityDomain,
    LinuxSchedulerFlag, LinuxSchedulerPolicy, MemoryPolicyFlagType, MemoryPolicyModeType,
    Scheduler, Spec,
};

use crate::error::{ContainerError, InitFailure, Result, Step};

/// Personality flags of `linux/personality.h` accepted in `linux.personality.flags`.
const PERSONALITY_FLAGS: &[(&str, u32)] = &[
    ("UNAME26", 0x0020000),
    ("ADDR_NO_RANDOMIZE", 0x0040000),
    ("FDPIC_FUNCPTRS", 0x0080000),
    ("MMAP_PAGE_ZERO", 0x0100000),
    ("ADDR_COMPAT_LAYOUT", 0x0200000),
    ("READ_IMPLIES_EXEC", 0x0400000),
    ("ADDR_LIMIT_32BIT", 0x0800000),
    ("SHORT_INODE", 0x1000000),
    ("WHOLE_SECONDS", 0x2000000),
    ("STICKY_TIMEOUTS", 0x4000000),
    ("ADDR_LIMIT_3GB", 0x8000000),
];

/// Highest NUMA node number accepted in `linux.memoryPolicy.nodes` (the kernel's largest
/// `MAX_NUMNODES` is 1 << 10).
const MAX_NODE: u32 = 1023;

/// What `features` reports as supported.
pub mod supported {
    pub const SCHED_POLICIES: &[&str] = &[
        "SCHED_OTHER",
        "SCHED_FIFO",
        "SCHED_RR",
        "SCHED_BATCH",
        "SCHED_IDLE",
        "SCHED_DEADLINE",
    ];
    pub const SCHED_FLAGS: &[&str] = &[
        "SCHED_FLAG_RESET_ON_FORK",
        "SCHED_FLAG_RECLAIM",
        "SCHED_FLAG_DL_OVERRUN",
        "SCHED_FLAG_KEEP_POLICY",
        "SCHED_FLAG_KEEP_PARAMS",
    ];
    pub const IOPRIO_CLASSES: &[&str] =
        &["IOPRIO_CLASS_RT", "IOPRIO_CLASS_BE", "IOPRIO_CLASS_IDLE"];
    pub const PERSONALITY_DOMAINS: &[&str] = &["LINUX", "LINUX32"];
    pub const MEMPOLICY_MODES: &[&str] = &[
        "MPOL_DEFAULT",
        "MPOL_PREFERRED",
        "MPOL_BIND",
        "MPOL_INTERLEAVE",
        "MPOL_LOCAL",
        "MPOL_PREFERRED_MANY",
        "MPOL_WEIGHTED_INTERLEAVE",
    ];
    pub const MEMPOLICY_FLAGS: &[&str] = &[
        "MPOL_F_NUMA_BALANCING",
        "MPOL_F_RELATIVE_NODES",
        "MPOL_F_STATIC_NODES",
    ];

    /// The names of `linux.personality.flags` accepted.
    pub fn personality_flags() -> Vec<&'static str> {
        super::PERSONALITY_FLAGS.iter().map(|(n, _)| *n).collect()
    }
}

/// oci-spec 0.10 spells two `process.scheduler.flags` differently from the runtime-spec
/// (`SCHED_RESET_ON_FORK`, `SCHED_FLAG_D_L_OVERRUN`): rewrite the spec's names in a process
/// object before it is parsed, so that configs written to the spec are accepted.
pub fn spec_flag_names(process: &mut serde_json::Value) {
    let Some(flags) = process
        .pointer_mut("/scheduler/flags")
        .and_then(serde_json::Value::as_array_mut)
    else {
        return;
    };
    for f in flags {
        match f.as_str() {
            Some("SCHED_FLAG_RESET_ON_FORK") => *f = "SCHED_RESET_ON_FORK".into(),
            Some("SCHED_FLAG_DL_OVERRUN") => *f = "SCHED_FLAG_D_L_OVERRUN".into(),
            _ => {}
        }
    }
}

fn invalid(field: &str, message: impl Into<String>) -> ContainerError {
    ContainerError::InvalidConfig {
        field: field.into(),
        message: message.into(),
    }
}

/// Check every field this module applies; the error names the field.
pub fn validate(spec: &Spec) -> Result<()> {
    if let Some(p) = spec.process() {
        if let Some(s) = p.scheduler() {
            sched_attr(s)?;
        }
        if let Some(io) = p.io_priority() {
            if !(0..=7).contains(&io.priority()) {
                return Err(invalid(
                    "process.ioPriority.priority",
                    format!("{} is out of range 0-7", io.priority()),
                ));
            }
        }
    }
    if let Some(l) = spec.linux() {
        if let Some(p) = l.personality() {
            personality(p)?;
        }
        if let Some(m) = l.memory_policy() {
            mempolicy(m)?;
        }
    }
    Ok(())
}

/// Apply the fields to the calling process. Called by the init just before it drops privileges.
pub fn apply(spec: &Spec) -> std::result::Result<(), InitFailure> {
    // Values were validated at create / exec: an error here is the kernel's.
    let bad = |step, e: ContainerError| InitFailure::msg(step, e.to_string());
    if let Some(l) = spec.linux() {
        if let Some(m) = l.memory_policy() {
            let (mode, nodes) = mempolicy(m).map_err(|e| bad(Step::MemoryPolicy, e))?;
            moat_sys::sched::set_mempolicy(mode, &nodes).map_err(|e| {
                let why = match e {
                    nix::errno::Errno::ENOSYS => " (this kernel has no NUMA support)",
                    nix::errno::Errno::EINVAL => " (mode, flags or nodes refused by this kernel)",
                    _ => "",
                };
                InitFailure::new(
                    Step::MemoryPolicy,
                    format!(
                        "linux.memoryPolicy: set_mempolicy {} nodes {:?}{why}",
                        m.mode(),
                        m.nodes().as_deref().unwrap_or("")
                    ),
                    e,
                )
            })?;
        }
        if let Some(p) = l.personality() {
            let want = personality(p).map_err(|e| bad(Step::Personality, e))?;
            moat_sys::sched::set_personality(want).map_err(|e| {
                InitFailure::new(
                    Step::Personality,
                    format!("linux.personality: personality({want:#x})"),
                    e,
                )
            })?;
            // The kernel takes any value; one it does not implement reads back differently.
            let got = moat_sys::sched::personality()
                .map_err(|e| InitFailure::new(Step::Personality, "read personality back", e))?;
            if got != want {
                return Err(InitFailure::msg(
                    Step::Personality,
                    format!(
                        "linux.personality: the kernel does not support domain {} with flags {:?} (asked {want:#x}, got {:#x})",
                        p.domain(),
                        p.flags().as_deref().unwrap_or_default(),
                        got
                    ),
                ));
            }
        }
    }
    let Some(p) = spec.process() else {
        return Ok(());
    };
    if let Some(io) = p.io_priority() {
        let class = match io.class() {
            IOPriorityClass::IoprioClassRt => moat_sys::sched::IOPRIO_CLASS_RT,
            IOPriorityClass::IoprioClassBe => moat_sys::sched::IOPRIO_CLASS_BE,
            IOPriorityClass::IoprioClassIdle => moat_sys::sched::IOPRIO_CLASS_IDLE,
        };
        moat_sys::sched::ioprio_set(class, io.priority() as u32).map_err(|e| {
            InitFailure::new(
                Step::IoPriority,
                format!(
                    "process.ioPriority: ioprio_set {} priority {}",
                    io.class(),
                    io.priority()
                ),
                e,
            )
        })?;
    }
    if let Some(s) = p.scheduler() {
        let attr = sched_attr(s).map_err(|e| bad(Step::Scheduler, e))?;
        moat_sys::sched::sched_setattr(&attr).map_err(|e| {
            let why = match e {
                nix::errno::Errno::ENOSYS => " (this kernel has no sched_setattr)",
                nix::errno::Errno::EPERM | nix::errno::Errno::EBUSY
                    if matches!(
                        s.policy(),
                        LinuxSchedulerPolicy::SchedFifo
                            | LinuxSchedulerPolicy::SchedRr
                            | LinuxSchedulerPolicy::SchedDeadline
                    ) =>
                {
                    " (real-time and deadline policies need CAP_SYS_NICE in the initial user namespace and bandwidth in the cgroup)"
                }
                _ => "",
            };
            InitFailure::new(
                Step::Scheduler,
                format!(
                    "process.scheduler: sched_setattr {} nice {} priority {}{why}",
                    s.policy(),
                    s.nice().unwrap_or(0),
                    s.priority().unwrap_or(0)
                ),
                e,
            )
        })?;
    }
    Ok(())
}

/// `process.scheduler` as a `struct sched_attr`, with the kernel's rules checked first.
fn sched_attr(s: &Scheduler) -> Result<moat_sys::sched::SchedAttr> {
    use LinuxSchedulerPolicy as P;
    let policy = match s.policy() {
        P::SchedOther => libc::SCHED_OTHER,
        P::SchedFifo => libc::SCHED_FIFO,
        P::SchedRr => libc::SCHED_RR,
        P::SchedBatch => libc::SCHED_BATCH,
        P::SchedIdle => libc::SCHED_IDLE,
        P::SchedDeadline => libc::SCHED_DEADLINE,
        P::SchedIso => {
            return Err(invalid(
                "process.scheduler.policy",
                "SCHED_ISO is not implemented by Linux",
            ))
        }
    };
    let nice = s.nice().unwrap_or(0);
    if !(-20..=19).contains(&nice) {
        return Err(invalid(
            "process.scheduler.nice",
            format!("{nice} is out of range -20..19"),
        ));
    }
    let priority = s.priority().unwrap_or(0);
    let realtime = matches!(s.policy(), P::SchedFifo | P::SchedRr);
    if realtime && !(1..=99).contains(&priority) {
        return Err(invalid(
            "process.scheduler.priority",
            format!("{priority} is out of range 1..99 for {}", s.policy()),
        ));
    }
    if !realtime && priority != 0 {
        return Err(invalid(
            "process.scheduler.priority",
            format!(
                "must be 0 for {} (only SCHED_FIFO and SCHED_RR have a static priority)",
                s.policy()
            ),
        ));
    }
    let (runtime, deadline, period) = (
        s.runtime().unwrap_or(0),
        s.deadline().unwrap_or(0),
        s.period().unwrap_or(0),
    );
    if s.policy() == &P::SchedDeadline {
        if runtime < 1024 || deadline < runtime || (period != 0 && period < deadline) {
            return Err(invalid(
                "process.scheduler",
                format!("SCHED_DEADLINE needs 1024 <= runtime <= deadline <= period (period 0 means deadline); got runtime {runtime}, deadline {deadline}, period {period}"),
            ));
        }
    } else if runtime != 0 || deadline != 0 || period != 0 {
        return Err(invalid(
            "process.scheduler",
            format!(
                "runtime, deadline and period apply only to SCHED_DEADLINE, not {}",
                s.policy()
            ),
        ));
    }
    let mut flags = 0u64;
    for f in s.flags().as_deref().unwrap_or_default() {
        flags |= match f {
            LinuxSchedulerFlag::SchedResetOnFork => libc::SCHED_FLAG_RESET_ON_FORK,
            LinuxSchedulerFlag::SchedFlagReclaim => libc::SCHED_FLAG_RECLAIM,
            LinuxSchedulerFlag::SchedFlagDLOverrun => libc::SCHED_FLAG_DL_OVERRUN,
            LinuxSchedulerFlag::SchedFlagKeepPolicy => libc::SCHED_FLAG_KEEP_POLICY,
            LinuxSchedulerFlag::SchedFlagKeepParams => libc::SCHED_FLAG_KEEP_PARAMS,
            LinuxSchedulerFlag::SchedFlagUtilClampMin
            | LinuxSchedulerFlag::SchedFlagUtilClampMax => {
                return Err(invalid(
                    "process.scheduler.flags",
                    format!("{f}: the spec has no utilisation clamp values to apply"),
                ))
            }
        } as u64;
    }
    let mut attr = moat_sys::sched::sched_attr();
    attr.sched_policy = policy as u32;
    attr.sched_flags = flags;
    attr.sched_nice = nice;
    attr.sched_priority = priority as u32;
    attr.sched_runtime = runtime;
    attr.sched_deadline = deadline;
    attr.sched_period = period;
    Ok(attr)
}

/// `linux.personality` as the value of `personality(2)`.
fn personality(p: &LinuxPersonality) -> Result<u32> {
    let mut v = match p.domain() {
        LinuxPersonalityDomain::PerLinux => 0x0000,
        LinuxPersonalityDomain::PerLinux32 => 0x0008,
    };
    for f in p.flags().as_deref().unwrap_or_default() {
        let (_, bit) = PERSONALITY_FLAGS
            .iter()
            .find(|(n, _)| n == f)
            .ok_or_else(|| {
                invalid(
                    "linux.personality.flags",
                    format!(
                        "unknown flag {f:?} (known: {})",
                        supported::personality_flags().join(", ")
                    ),
                )
            })?;
        v |= bit;
    }
    Ok(v)
}

/// `linux.memoryPolicy` as the mode (with its flags) and node mask of `set_mempolicy(2)`.
fn mempolicy(m: &LinuxMemoryPolicy) -> Result<(i32, Vec<u64>)> {
    use MemoryPolicyModeType as M;
    let nodes = parse_nodes(m.nodes().as_deref().unwrap_or(""))?;
    let mode = match m.mode() {
        M::MpolDefault => libc::MPOL_DEFAULT,
        M::MpolPreferred => libc::MPOL_PREFERRED,
        M::MpolBind => libc::MPOL_BIND,
        M::MpolInterleave => libc::MPOL_INTERLEAVE,
        M::MpolLocal => libc::MPOL_LOCAL,
        M::MpolPreferredMany => 5,
        M::MpolWeightedInterleave => 6,
    };
    match m.mode() {
        M::MpolDefault | M::MpolLocal if !nodes.is_empty() => {
            return Err(invalid(
                "linux.memoryPolicy.nodes",
                format!("must be empty with {}", m.mode()),
            ))
        }
        M::MpolBind | M::MpolInterleave | M::MpolPreferredMany | M::MpolWeightedInterleave
            if nodes.is_empty() =>
        {
            return Err(invalid(
                "linux.memoryPolicy.nodes",
                format!("{} needs at least one node", m.mode()),
            ))
        }
        _ => {}
    }
    let mut flags = 0;
    for f in m.flags().as_deref().unwrap_or_default() {
        flags |= match f {
            MemoryPolicyFlagType::MpolFNumaBalancing => libc::MPOL_F_NUMA_BALANCING,
            MemoryPolicyFlagType::MpolFRelativeNodes => libc::MPOL_F_RELATIVE_NODES,
            MemoryPolicyFlagType::MpolFStaticNodes => libc::MPOL_F_STATIC_NODES,
        };
    }
    let both = libc::MPOL_F_RELATIVE_NODES | libc::MPOL_F_STATIC_NODES;
    if flags & both == both {
        return Err(invalid(
            "linux.memoryPolicy.flags",
            "MPOL_F_RELATIVE_NODES and MPOL_F_STATIC_NODES exclude each other",
        ));
    }
    Ok((mode | flags, nodes))
}

/// A node list such as `0-3,7` as a bit mask in 64-bit words (empty for an empty list).
fn parse_nodes(s: &str) -> Result<Vec<u64>> {
    let bad = |why: String| invalid("linux.memoryPolicy.nodes", format!("{s:?}: {why}"));
    let mut words: Vec<u64> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |t: &str| {
            t.trim()
                .parse::<u32>()
                .map_err(|_| bad(format!("{t:?} is not a node number")))
        };
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => (num(part)?, num(part)?),
        };
        if lo > hi || hi > MAX_NODE {
            return Err(bad(format!(
                "range {part:?} is empty or above node {MAX_NODE}"
            )));
        }
        for n in lo..=hi {
            let w = (n / 64) as usize;
            if words.len() <= w {
                words.resize(w + 1, 0);
            }
            words[w] |= 1 << (n % 64);
        }
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(v: serde_json::Value) -> Result<moat_sys::sched::SchedAttr> {
        sched_attr(&serde_json::from_value(v).unwrap())
    }

    #[test]
    fn scheduler_values_are_checked() {
        let a = sched(serde_json::json!({"policy": "SCHED_BATCH", "nice": 7})).unwrap();
        assert_eq!((a.sched_policy, a.sched_nice), (3, 7));
        let a = sched(serde_json::json!({"policy": "SCHED_FIFO", "priority": 10, "flags": ["SCHED_RESET_ON_FORK"]})).unwrap();
        assert_eq!(
            (a.sched_policy, a.sched_priority, a.sched_flags),
            (1, 10, 1)
        );
        for bad in [
            serde_json::json!({"policy": "SCHED_FIFO"}),
            serde_json::json!({"policy": "SCHED_OTHER", "priority": 3}),
            serde_json::json!({"policy": "SCHED_OTHER", "nice": 20}),
            serde_json::json!({"policy": "SCHED_ISO"}),
            serde_json::json!({"policy": "SCHED_DEADLINE", "runtime": 2000, "deadline": 1000}),
            serde_json::json!({"policy": "SCHED_BATCH", "period": 1000}),
            serde_json::json!({"policy": "SCHED_OTHER", "flags": ["SCHED_FLAG_UTIL_CLAMP_MIN"]}),
        ] {
            assert!(sched(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn spec_flag_names_are_accepted() {
        let mut p = serde_json::json!({"scheduler": {"policy": "SCHED_OTHER",
            "flags": ["SCHED_FLAG_RESET_ON_FORK", "SCHED_FLAG_DL_OVERRUN", "SCHED_FLAG_RECLAIM"]}});
        spec_flag_names(&mut p);
        let s: Scheduler = serde_json::from_value(p["scheduler"].clone()).unwrap();
        let a = sched_attr(&s).unwrap();
        assert_eq!(a.sched_flags, 0x1 | 0x4 | 0x2);
    }

    #[test]
    fn nodes_parse_to_a_mask() {
        assert_eq!(parse_nodes("").unwrap(), Vec::<u64>::new());
        assert_eq!(parse_nodes("0-2,5").unwrap(), vec![0b100111]);
        assert_eq!(parse_nodes("64").unwrap(), vec![0, 1]);
        for bad in ["x", "3-1", "0-5000", "1-"] {
            assert!(parse_nodes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn personality_domain_and_flags() {
        let p: LinuxPersonality = serde_json::from_value(
            serde_json::json!({"domain": "LINUX32", "flags": ["ADDR_NO_RANDOMIZE"]}),
        )
        .unwrap();
        assert_eq!(personality(&p).unwrap(), 0x0040008);
        let p: LinuxPersonality =
            serde_json::from_value(serde_json::json!({"domain": "LINUX", "flags": ["NOPE"]}))
                .unwrap();
        assert!(personality(&p).is_err());
    }
}
