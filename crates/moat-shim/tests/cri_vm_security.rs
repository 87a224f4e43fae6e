//! What a VM pod honours of a pod's and its containers' settings, through Kubernetes' CRI (the
//! critest specs "set hostname", "safe/unsafe sysctls", "NoNewPrivs", "Privileged is true",
//! "adding capability" and "ReadOnlyRootfs is true", each of which failed with `moat-vm` once).
//! One privileged VM pod with a hostname and sysctls, and five containers in it:
//! - a default one: it has the pod's hostname and sysctls (the guest's UTS, IPC and network
//!   namespaces are the pod's), and cannot make a bridge (no CAP_NET_ADMIN);
//! - a privileged one: `brctl addbr` and `ip link add type dummy` work (the guest kernel loads
//!   the bridge and dummy modules from the initramfs through the agent as /sbin/modprobe);
//! - one with a read-only rootfs (with containerd's /etc/hostname bind into it): writes fail;
//! - two running as uid 1000 with a set-user-ID-root program: with noNewPrivileges false it
//!   runs as euid 0, with true as 1000.
//!
//! Skipped, with the reason printed, when qemu-system-x86_64, a C compiler or the guest kernel
//! cannot be had.

#[path = "../../moat-runtime/tests/support/mod.rs"]
mod support;
use support::*;

#[path = "../../moat-runtime/tests/support/vm_agent.rs"]
mod vm_agent;

#[path = "cri/common.rs"]
mod common;
use common::cri_api::*;
use common::*;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const VM_RUNTIME: &str = r#"    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.moat-vm]
      runtime_type = "io.containerd.moat-vm.v2""#;
const HOSTNAME: &str = "moat-vm-host-7";
/// In the test image: prints its effective uid, set-user-ID root.
const NNP: &str = "/usr/local/bin/nnp";

/// The busybox image with [`NNP`] added, and the pause image of the CRI tests; `None` without
/// a C compiler that links statically.
fn images_with_nnp(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let src = dir.join("nnp.c");
    std::fs::write(
        &src,
        "#include <stdio.h>\n#include <unistd.h>\n\
         int main(void) { printf(\"euid %d\\n\", (int)geteuid()); return 0; }\n",
    )
    .unwrap();
    let built = dir.join("nnp");
    let ok = Command::new("cc")
        .arg("-static")
        .arg("-o")
        .arg(&built)
        .arg(&src)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return None;
    }
    Some(images_with(dir, |rootfs| {
        let bin = rootfs.join(NNP.trim_start_matches('/'));
        std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
        std::fs::copy(&built, &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o4755)).unwrap();
    }))
}

/// Create and start a container of `pod` that sleeps, with security context `sc` (host
/// network: the pod's).
fn start(
    cri: &Cri,
    pod: &str,
    sandbox: &PodSandboxConfig,
    name: &str,
    sc: LinuxContainerSecurityContext,
) -> String {
    let t = Instant::now();
    let sc = LinuxContainerSecurityContext {
        namespace_options: Some(host_network()),
        ..sc
    };
    let cid = start_container_sc(cri, pod, sandbox, name, &["sleep", "1000"], sc);
    eprintln!("container {name}: created and started in {:?}", t.elapsed());
    cid
}

/// `cmd`'s stdout in `cid`, trimmed; it must exit 0.
fn out(cri: &Cri, cid: &str, cmd: &[&str]) -> String {
    exec_out(cri, cid, cmd).trim().to_owned()
}

#[test]
fn cri_vm_pod_honours_hostname_sysctls_privileges_and_readonly_rootfs() {
    let test = "cri_vm_pod_honours_hostname_sysctls_privileges_and_readonly_rootfs";
    if !have_all(test, &["containerd", "ctr", "qemu-system-x86_64", "cc"]) {
        return;
    }
    let t0 = Instant::now();
    let Some(shims) = vm_shims(test, vm_agent::agent(), "moat-cri-vm-sec-shims-") else {
        return;
    };
    let work = tempfile::Builder::new()
        .prefix("moat-cri-vm-sec-images-")
        .tempdir()
        .unwrap();
    let Some((busybox, pause)) = images_with_nnp(work.path()) else {
        eprintln!("{test}: skipped: cc -static failed (apt-get install gcc libc6-dev)");
        return;
    };
    let cd = CriContainerd::start_with(shims.path(), VM_RUNTIME);
    cd.import(&busybox);
    cd.import(&pause);
    let logs = cd.path().join("pod-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let cri = Cri::connect(&cd.sock(), cd.log_path());
    eprintln!("{test}: set up in {:?}", t0.elapsed());

    let mut sandbox = pod_config(
        "moat-vm-security",
        &format!("moat-cri-vm-sec-{}", std::process::id()),
        &logs,
        &cd.cgroup_parent,
        host_network(),
    );
    sandbox.hostname = HOSTNAME.into();
    if let Some(l) = sandbox.linux.as_mut() {
        l.sysctls = [
            ("kernel.shm_rmid_forced", "1"),
            ("fs.mqueue.msg_max", "100"),
            ("net.ipv4.ping_group_range", "0 2147483647"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        if let Some(sc) = l.security_context.as_mut() {
            sc.privileged = true;
        }
    }
    let t = Instant::now();
    let pod = start_pod(&cri, &sandbox, "moat-vm");
    eprintln!("pod started (VM boot included) in {:?}", t.elapsed());

    // The pod's hostname and sysctls, in a default container.
    let plain = start(&cri, &pod, &sandbox, "plain", Default::default());
    assert_eq!(out(&cri, &plain, &["hostname"]), HOSTNAME);
    for (path, want) in [
        ("/proc/sys/kernel/shm_rmid_forced", "1"),
        ("/proc/sys/fs/mqueue/msg_max", "100"),
        ("/proc/sys/net/ipv4/ping_group_range", "0\t2147483647"),
    ] {
        assert_eq!(out(&cri, &plain, &["cat", path]), want, "{path}");
    }
    // Without CAP_NET_ADMIN no bridge, module or not.
    let r = exec(&cri, &plain, &["brctl", "addbr", "nope0"]);
    assert_ne!(r.exit_code, 0, "brctl addbr without CAP_NET_ADMIN: {r:?}");

    // A privileged container makes a bridge and a veth pair: the guest loads their modules.
    let privileged = LinuxContainerSecurityContext {
        privileged: true,
        ..Default::default()
    };
    let admin = start(&cri, &pod, &sandbox, "admin", privileged);
    out(&cri, &admin, &["brctl", "addbr", "foobar"]);
    out(&cri, &admin, &["ip", "link", "add", "d0", "type", "dummy"]);
    let links = out(&cri, &admin, &["ip", "-o", "link"]);
    assert!(links.contains("foobar") && links.contains("d0"), "{links}");

    // A read-only rootfs (containerd binds /etc/hostname into it).
    let readonly = LinuxContainerSecurityContext {
        readonly_rootfs: true,
        ..Default::default()
    };
    let ro = start(&cri, &pod, &sandbox, "ro", readonly);
    let r = exec(&cri, &ro, &["touch", "/test.go"]);
    assert_ne!(r.exit_code, 0, "{r:?}");
    assert!(text(&r.stderr).contains("Read-only file system"), "{r:?}");
    assert_eq!(out(&cri, &ro, &["cat", "/etc/hostname"]), HOSTNAME);

    // A set-user-ID-root program run by uid 1000: euid 0 unless noNewPrivileges.
    for (name, nnp, want) in [
        ("nnp-false", false, "euid 0"),
        ("nnp-true", true, "euid 1000"),
    ] {
        let sc = LinuxContainerSecurityContext {
            no_new_privs: nnp,
            run_as_user: Some(Int64Value { value: 1000 }),
            ..Default::default()
        };
        let cid = start(&cri, &pod, &sandbox, name, sc);
        assert_eq!(out(&cri, &cid, &["id", "-u"]), "1000", "{name}");
        assert_eq!(out(&cri, &cid, &[NNP]), want, "{name}");
    }

    stop_and_remove_pod(&cri, &pod);
    eprintln!("{test}: done in {:?}", t0.elapsed());
}
