//! End-to-end tests of VM isolation: boot the Debian cloud kernel with moat's initramfs under
//! QEMU (TCG on hosts whose KVM cannot run it), run containers from a busybox ext4 disk through
//! the agent, and check what a guest sees; kill QEMU and check the host notices and cleans up.
//! Root only (skipped otherwise); the guest kernel is fetched with apt-get on first use.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use moat_agent_proto::{ExitStatus, GuestMessage, RootfsDisk};
use moat_vm::qemu::Qemu;
use moat_vm::{Disk, Hypervisor, VmConfig, VmInstance};

mod common;
use common::{assets, busybox_disk, config, is_root};

fn boot(disk: Option<&Path>) -> (moat_vm::qemu::QemuVm, Duration) {
    let a = assets();
    let mut cfg = VmConfig::new(a.kernel.vmlinuz.clone(), a.initramfs.clone());
    if let Some(d) = disk {
        cfg.disks.push(Disk {
            path: d.to_path_buf(),
            serial: "rootfs0".into(),
            readonly: true,
        });
    }
    let t = Instant::now();
    let vm = Qemu::new(a.accel)
        .boot(&cfg)
        .unwrap_or_else(|e| panic!("boot: {e}"));
    (vm, t.elapsed())
}

fn disk() -> RootfsDisk {
    RootfsDisk {
        serial: "rootfs0".into(),
        fstype: "ext4".into(),
        readonly: true,
        overlay: false,
    }
}

#[test]
fn container_in_vm_sees_guest_kernel_and_processes_only() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = busybox_disk(tmp.path());
    // A host process the guest must not see.
    let _marker = Marker(
        Command::new("sleep")
            .arg("4321.5")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (mut vm, boot_time) = boot(Some(&img));
    eprintln!("boot to agent ready: {boot_time:?}");
    let run_dir = vm.run_dir().to_path_buf();
    let _console = ConsoleOnPanic(run_dir.join("console.log"));
    // QEMU confined itself to the run dir's empty jail once the VM was set up.
    let root = std::fs::read_link(format!("/proc/{}/root", vm.pid())).unwrap();
    assert_eq!(root, run_dir.join(moat_vm::qemu::JAIL_DIR), "QEMU's root");
    assert_eq!(
        std::fs::read_dir(&root).unwrap().count(),
        0,
        "the jail is empty"
    );
    // A VM without a network namespace of its own runs in a fresh, empty one: QEMU never sees
    // the host's network stack.
    let ns = |pid: String| std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    assert_ne!(
        ns(vm.pid().to_string()),
        ns("self".into()),
        "QEMU is in the host's network namespace"
    );
    let host_release = nix::sys::utsname::uname().unwrap();
    let host_release = host_release.release().to_string_lossy().into_owned();
    let agent = vm.agent().unwrap();
    assert_ne!(agent.kernel_release(), host_release);

    // A malformed request gets an error reply and the agent keeps serving.
    let junk = br#"{"id":99,"request":{"format_disk":{}}}"#;
    let mut frame = (junk.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(junk);
    agent.send_frame_bytes(&frame).unwrap();
    // A frame of bytes that are not JSON at all: answered with id 0.
    agent
        .send_frame_bytes(&[8, 0, 0, 0, 0xff, 0xfe, 0, 1, 2, 3, 4, 5])
        .unwrap();
    let t = Instant::now();
    let script = "uname -r; echo ---; ps; echo ---; \
                  if touch /probe 2>/dev/null; then echo WRITE-OK; else echo WRITE-REFUSED; fi; \
                  exit 7";
    agent
        .create("c1", &config(&["sh", "-c", script]), disk())
        .unwrap_or_else(|e| panic!("create: {e}"));
    agent.start("c1").unwrap();
    let out = agent
        .wait_exit("c1", None, Duration::from_secs(30))
        .unwrap();
    eprintln!("create+start+run: {:?}", t.elapsed());
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parts: Vec<&str> = stdout.split("---\n").collect();
    assert_eq!(parts.len(), 3, "{stdout}");
    assert_eq!(parts[0].trim(), agent.kernel_release());
    assert_ne!(parts[0].trim(), host_release);
    assert!(
        parts[1].contains("/init"),
        "the guest's PID 1 is the agent: {}",
        parts[1]
    );
    assert!(
        !parts[1].contains("4321.5"),
        "a host process is visible: {}",
        parts[1]
    );
    assert_eq!(parts[2].trim(), "WRITE-REFUSED");
    assert_eq!(out.status, ExitStatus::Code(7));

    // The malformed requests were answered with typed errors.
    let agent = vm.agent().unwrap();
    agent.ping().unwrap();
    let malformed: Vec<u64> = agent
        .pending()
        .filter_map(|m| match m {
            GuestMessage::Response { id, result: Err(e) }
                if e.code == moat_agent_proto::ErrorCode::Malformed =>
            {
                Some(*id)
            }
            _ => None,
        })
        .collect();
    assert_eq!(malformed, vec![99, 0]);

    // exec and kill in a second container on the same read-only disk.
    agent
        .create("c2", &config(&["sleep", "60"]), disk())
        .unwrap();
    agent.start("c2").unwrap();
    let proc_json =
        r#"{"args":["uname","-r"],"cwd":"/","env":["PATH=/bin"],"user":{"uid":0,"gid":0}}"#;
    agent.exec("c2", "e1", proc_json, false).unwrap();
    let e = agent
        .wait_exit("c2", Some("e1"), Duration::from_secs(30))
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&e.stdout).trim(),
        agent.kernel_release()
    );
    assert_eq!(e.status, ExitStatus::Code(0));
    agent.kill("c2", None, 9, false).unwrap();
    let k = agent
        .wait_exit("c2", None, Duration::from_secs(30))
        .unwrap();
    assert_eq!(k.status, ExitStatus::Signal(9));
    agent.delete("c1", false).unwrap();
    agent.delete("c2", false).unwrap();

    let t = Instant::now();
    let st = vm.stop(Duration::from_secs(20)).unwrap();
    eprintln!("shutdown: {:?} ({st})", t.elapsed());
    assert!(st.success(), "qemu exit status after power-off: {st}");
    assert!(
        !run_dir.exists(),
        "run dir {} left behind",
        run_dir.display()
    );
}

/// Kills the host marker process however the test ends.
struct Marker(std::process::Child);
impl Drop for Marker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Prints the guest console if the test fails (before the VM's run dir is removed).
struct ConsoleOnPanic(PathBuf);
impl Drop for ConsoleOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.0).unwrap_or_default();
            eprintln!("--- guest console:\n{text}");
        }
    }
}

#[test]
fn killing_qemu_is_noticed_and_cleaned_up() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let (mut vm, boot_time) = boot(None);
    eprintln!("boot to agent ready: {boot_time:?}");
    if std::env::var_os("MOAT_VM_DEBUG").is_some() {
        eprintln!("--- guest console:\n{}", vm.console());
    }
    let pid = vm.pid();
    let run_dir = vm.run_dir().to_path_buf();
    assert!(run_dir.join("agent.sock").exists());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let st = vm
        .wait_timeout(Duration::from_secs(5))
        .unwrap()
        .expect("wait returns once QEMU is killed");
    assert!(!st.success());
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "qemu {pid} still exists"
    );
    assert!(
        !run_dir.exists(),
        "run dir {} left behind",
        run_dir.display()
    );
    assert!(vm.agent().is_err());
}
