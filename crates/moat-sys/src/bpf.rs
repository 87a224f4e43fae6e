//! The `bpf(2)` calls used to attach cgroup v2 device programs. (Filled by the cgroups work.)
