//! The `moat` CLI with `--isolation vm`: a guest kernel with nothing set up but the build, volumes
//! over virtiofs, detached VM containers with logs, exec, stop and rm; and
//! `moat run --isolation vm --network bridge -p 127.0.0.1:PORT:80`: a busybox httpd in a VM
//! container answers from the host through the published port (CNI bridge and portmap on the
//! host, a tap joined to the namespace's eth0 by tc redirects, the guest's eth0 with the CNI
//! address); `moat rm -f` leaves no namespace, tap, iptables rule or process behind. Traffic stays
//! on this machine (loopback and the moat0 bridge). VM containers of an image are clones of a
//! template: exit code, output, the writable layer, /etc files and a published port through a
//! clone.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod harness;
use harness::*;
mod images;

/// Also the zero set-up check: nothing but the build (no MOAT_AGENT_BIN) is needed.
#[test]
fn run_isolation_vm_uses_a_guest_kernel() {
    let Some(m) = Moat::new() else { return };
    let r = busybox_rootfs();
    let rp = r.path().to_str().unwrap();
    // A volume reaches the guest (virtiofs), read-only.
    let vol = tempfile::tempdir().unwrap();
    std::fs::write(vol.path().join("f"), "from-the-host\n").unwrap();
    let ro = format!("{}:/data:ro", vol.path().display());
    let o = m.vm_cmd_as_built(&[
        "run",
        "--rm",
        "--isolation",
        "vm",
        "--network",
        "none",
        "-v",
        &ro,
        "--rootfs",
        rp,
        "sh",
        "-c",
        "uname -r; cat /data/f; echo x > /data/f || echo refused; \
         echo nets: $(busybox ls /sys/class/net); exit 3",
    ]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let guest = out.lines().next().unwrap_or_default();
    assert!(
        !guest.trim().is_empty() && guest.trim() != host.trim(),
        "guest {guest:?} host {host:?}"
    );
    assert!(
        out.contains("from-the-host") && out.contains("refused"),
        "{out}"
    );
    // --network none: loopback only in the guest.
    assert!(out.contains("nets: lo\n"), "{out}");
    assert_eq!(
        std::fs::read_to_string(vol.path().join("f")).unwrap(),
        "from-the-host\n"
    );
    assert_eq!(m.ok(&["ps", "-a", "-q"]), "", "--rm left a container");
    // A VM cannot share the host's network stack: refused with one line, nothing made.
    let o = m.cmd(&[
        "run",
        "--rm",
        "--isolation",
        "vm",
        "--network",
        "host",
        "--rootfs",
        rp,
        "true",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(125), "{err}");
    assert!(
        err.starts_with("error:") && err.contains("cannot share the host's network stack"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(
        m.ok(&["ps", "-a", "-q"]),
        "",
        "a refused run left a container"
    );
}

/// `moat run -d --isolation vm`: the monitor stays attached to the guest, so the container's
/// output reaches `moat logs`; `exec`, `ps`, `stop` and `rm` reach the VM; nothing is left.
#[test]
fn detached_vm_container_logs_exec_stop_rm() {
    let Some(m) = Moat::new() else { return };
    let r = busybox_rootfs();
    let rp = r.path().to_str().unwrap();
    let id = m
        .vm_ok(&[
            "run",
            "-d",
            "--isolation",
            "vm",
            "--rootfs",
            rp,
            "sh",
            "-c",
            "uname -r; echo vm-ready; trap 'exit 9' TERM; while :; do sleep 1; done",
        ])
        .trim()
        .to_owned();
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    wait_for("the VM container's output in its log", || {
        m.ok(&["logs", &id]).contains("vm-ready")
    });
    let logs = m.ok(&["logs", &id]);
    let guest = logs.lines().next().unwrap_or_default().trim().to_owned();
    assert!(
        !guest.is_empty() && guest != host.trim(),
        "{logs:?} (host {host:?})"
    );
    assert!(m.ok(&["ps"]).contains(&id[..12]), "not running");
    assert_eq!(
        m.vm_ok(&["exec", &id, "sh", "-c", "uname -r"]).trim(),
        guest
    );
    m.ok(&["stop", "-t", "20", &id]);
    let ps = m.ok(&["ps", "-a"]);
    assert!(ps.contains("exited (9)"), "{ps}");
    m.ok(&["rm", &id]);
    m.assert_gone(&id);
    assert!(
        !std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&id[..12]))
        }),
        "a process of the VM container is left"
    );
}

/// `moat ARGS` as a shell command line (the agent binary in its environment), for `script`.
fn moat_line(m: &Moat, args: &str) -> String {
    format!(
        "MOAT_AGENT_BIN={} {} --root {} {args}",
        vm_agent::agent().display(),
        env!("CARGO_BIN_EXE_moat"),
        m.root().display()
    )
}

/// Run `shell` (a sh command line) in `script`, which gives it a terminal.
fn in_pty(shell: &str) -> std::process::Output {
    Command::new("script")
        .args(["-qec", shell, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

/// `-t` with `--isolation vm`: the guest's pty on our terminal (`run -it` of a rootfs and of an
/// image, whose VM is a template clone; `exec -it`; its size copied, typed input through the
/// guest's line discipline), `-dt` with the terminal's output in the log; nothing left after
/// `rm -f`.
#[test]
fn vm_run_and_exec_with_a_terminal() {
    let Some(m) = Moat::new() else { return };
    let r = busybox_rootfs();
    let rp = r.path().display().to_string();
    let t = Instant::now();
    let o = in_pty(&format!(
        "stty rows 33 cols 77; {}",
        moat_line(
            &m,
            &format!(
                "run --rm -it --isolation vm --network none --rootfs {rp} sh -c \
                 'tty; stty size; exit 3'"
            )
        )
    ));
    eprintln!("moat run -it --isolation vm: {:?}", t.elapsed());
    let out = String::from_utf8_lossy(&o.stdout).replace('\r', "");
    assert_eq!(o.status.code(), Some(3), "{out}");
    assert!(out.contains("/dev/pts/0\n"), "{out}");
    assert!(out.contains("33 77\n"), "{out}");
    assert_eq!(m.ok(&["ps", "-a", "-q"]), "", "--rm left a container");
    // An image's VM container is a clone of a template: the same terminal.
    images::import(&m, "bb:tty");
    let o = in_pty(&format!(
        "stty rows 21 cols 61; {}",
        moat_line(
            &m,
            "run --rm -it --isolation vm --network none bb:tty sh -c 'tty; stty size; exit 5'"
        )
    ));
    let out = String::from_utf8_lossy(&o.stdout).replace('\r', "");
    assert_eq!(o.status.code(), Some(5), "{out}");
    assert!(
        out.contains("/dev/pts/0\n") && out.contains("21 61\n"),
        "{out}"
    );
    assert_eq!(m.ok(&["ps", "-a", "-q"]), "", "--rm left a container");
    let id = m
        .vm_ok(&[
            "run",
            "-d",
            "-t",
            "--isolation",
            "vm",
            "--network",
            "none",
            "--rootfs",
            &rp,
            "sh",
            "-c",
            "echo tty-is-$(tty); sleep 600",
        ])
        .trim()
        .to_owned();
    wait_for("the terminal's output in the log", || {
        m.ok(&["logs", &id]).contains("tty-is-/dev/pts/0")
    });
    let o = Command::new("sh")
        .args([
            "-c",
            &format!(
                "printf 'echo typed-$((6*7)); tty\\nexit 4\\n' | script -qec \"{}\" /dev/null",
                moat_line(&m, &format!("exec -it {id} sh"))
            ),
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).replace('\r', "");
    assert_eq!(o.status.code(), Some(4), "{out}");
    assert!(out.contains("typed-42\n/dev/pts/"), "{out}");
    m.vm_ok(&["rm", "-f", &id]);
    m.assert_gone(&id);
    assert!(
        !std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&id[..12]))
        }),
        "a process of the VM container is left"
    );
}

/// `moat run -d --isolation vm --network bridge -p 127.0.0.1:PORT:80 SOURCE...` running a busybox
/// httpd that serves `body`, waited for until it answers; returns the id, the port and the first
/// answer. `source`: `--rootfs DIR` or an image; `bb` the way to call busybox there.
fn start_httpd(m: &Moat, source: &[&str], bb: &str, body: &str) -> (String, u16, String) {
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:80");
    let script = format!(
        "busybox mkdir -p /tmp/www && echo {body} > /tmp/www/index.html && \
         exec {bb}httpd -f -p 80 -h /tmp/www"
    );
    let t = Instant::now();
    let mut args = vec![
        "run",
        "-d",
        "--isolation",
        "vm",
        "--network",
        "bridge",
        "-p",
        &publish,
    ];
    args.extend_from_slice(source);
    args.extend_from_slice(&["sh", "-c", &script]);
    let id = m.vm_ok(&args).trim().to_owned();
    eprintln!("run -d (VM with a network device): {:?}", t.elapsed());
    let deadline = Instant::now() + Duration::from_secs(30);
    let answer = loop {
        match http_get(port) {
            Ok(b) if b.contains(body) => break b,
            r if Instant::now() > deadline => panic!("no answer on port {port}: {r:?}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    eprintln!("first answer: {:?} after run", t.elapsed());
    (id, port, answer)
}

#[test]
fn vm_container_answers_on_a_published_port() {
    if !Path::new("/usr/lib/cni/bridge").exists() {
        eprintln!("skipped: needs containernetworking-plugins");
        return;
    }
    let Some(m) = Moat::new() else { return };
    let r = tempfile::tempdir().unwrap();
    let bin = r.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", bin.join("sh")).unwrap();
    let rootfs = r.path().to_str().unwrap();
    let (id, port, body) = start_httpd(&m, &["--rootfs", rootfs], "busybox ", "hello-from-a-vm");
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    let t = Instant::now();
    for _ in 0..20 {
        http_get(port).unwrap();
    }
    eprintln!("request latency through -p: {:?}", t.elapsed() / 20);
    let inspect: serde_json::Value = serde_json::from_str(&m.vm_ok(&["inspect", &id])).unwrap();
    let ip = inspect["Network"]["IPAddress"].as_str().unwrap().to_owned();
    assert!(ip.parse::<std::net::Ipv4Addr>().is_ok(), "{inspect}");
    // The guest has the CNI address on eth0 (the namespace's veth, seen through the tap).
    let seen = m.vm_ok(&["exec", &id, "busybox", "ip", "-4", "addr", "show", "eth0"]);
    assert!(seen.contains(&format!("inet {ip}/24")), "{seen}");
    // /etc/hosts and /etc/resolv.conf as for a namespaces container (moat's files, shared).
    let etc = m.vm_ok(&[
        "exec",
        &id,
        "busybox",
        "cat",
        "/etc/hosts",
        "/etc/resolv.conf",
    ]);
    assert!(
        etc.contains(&id[..12]) && etc.contains("nameserver"),
        "{etc}"
    );
    let netns = m.root().join("containers").join(&id).join("netns");
    assert!(netns.exists());
    m.vm_ok(&["rm", "-f", &id]);
    assert!(!netns.exists(), "the network namespace is still pinned");
    let links = Command::new("ip").args(["link"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains("_moat"),
        "a tap is left in the host"
    );
    let nat = Command::new("iptables")
        .args(["-t", "nat", "-S"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&nat.stdout).contains(&id),
        "CNI rules of {id} left"
    );
    assert!(
        !std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&id[..12]))
        }),
        "a process of the VM container is left"
    );
    assert!(http_get(port).is_err(), "the port still answers");
}

/// `moat run --isolation vm IMAGE`: the first run makes the image's disk and the template, the
/// next ones are clones of it, answer with their exit code and output, write to their own layer,
/// see moat's /etc files, and serve a published port.
#[test]
fn vm_containers_of_an_image_are_clones_of_a_template() {
    if !Path::new("/usr/lib/cni/bridge").exists() {
        eprintln!("skipped: needs containernetworking-plugins");
        return;
    }
    let Some(m) = Moat::new() else { return };
    images::import(&m, "bb:v1");
    // The loopback is up though the host sends no network request for `--network none`
    // (the agent brings it up at boot, before the template is saved).
    let script = "echo out; echo err >&2; echo w > /x && cat /x; \
                  cat /etc/hostname; busybox ip -o link show lo | grep -o LOOPBACK,UP; exit 4";
    // Templates are per machine and kept: another test (or an earlier run) may have built this
    // one already, and then the first run only makes the image's disk.
    let mut built_template = false;
    let mut times = vec![];
    for _ in 0..2 {
        let t = Instant::now();
        let o = m.vm_cmd(&[
            "run",
            "--rm",
            "--isolation",
            "vm",
            "--network",
            "none",
            "--hostname",
            "clonehost",
            "bb:v1",
            "sh",
            "-c",
            script,
        ]);
        times.push(t.elapsed());
        if times.len() == 1 {
            // This run built it (not a test running alongside): it says so, once.
            built_template = String::from_utf8_lossy(&o.stderr).contains("built the VM template");
        }
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
        );
        assert_eq!(o.status.code(), Some(4), "stdout {out} stderr {err}");
        assert_eq!(out, "out\nw\nclonehost\nLOOPBACK,UP\n", "stderr {err}");
        assert!(err.contains("err\n"), "{err}");
    }
    eprintln!(
        "moat run --rm --isolation vm: first (disk image + template) {:?}, then {:?}",
        times[0], times[1]
    );
    if built_template {
        assert!(times[1] < times[0], "{times:?}");
    }
    // `--rm` of a clone SIGKILLs its QEMU (nothing in it outlives it) and leaves nothing.
    assert_eq!(m.ok(&["ps", "-a", "-q"]), "", "--rm left a container");
    let root = m.root().to_string_lossy().into_owned();
    let qemus = qemus_of(&root);
    assert!(qemus.is_empty(), "QEMU left: {qemus:?}");
    let images = std::fs::read_dir(m.root().join("vm-images"))
        .unwrap()
        .count();
    assert_eq!(images, 1, "one disk image for the image");

    // A clone on the bridge network: its MAC and address are its own, the port answers.
    let (id, _port, _) = start_httpd(&m, &["bb:v1"], "", "hello-from-a-clone");
    // The state's pid of a VM container is its QEMU's.
    let inspect: serde_json::Value = serde_json::from_str(&m.vm_ok(&["inspect", &id])).unwrap();
    let qemu = inspect["State"]["Pid"].as_i64().unwrap();
    let cmdline = std::fs::read(format!("/proc/{qemu}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(
        cmdline.contains("-incoming defer"),
        "not a clone: {cmdline}"
    );
    let ip = inspect["Network"]["IPAddress"].as_str().unwrap().to_owned();
    let seen = m.vm_ok(&["exec", &id, "busybox", "ip", "addr", "show", "eth0"]);
    assert!(seen.contains(&format!("inet {ip}/24")), "{seen}");
    assert!(
        !seen.contains("02:6d:6f:61:74"),
        "the template's MAC: {seen}"
    );
    m.vm_ok(&["rm", "-f", &id]);
    wait_ended(qemu as i32, &format!("QEMU of {id}"));
}

/// Wait until process `pid` is gone, or a zombie its new parent has yet to reap.
fn wait_ended(pid: i32, what: &str) {
    wait_for(&format!("{what} ({pid}) to end"), || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |st| {
            st.rsplit_once(") ")
                .is_some_and(|(_, r)| r.starts_with('Z'))
        })
    });
}

/// `kill -9` of moat while it builds a template: the template's QEMU and its half-built
/// directory are left, and the next VM start of that shape removes both before it builds its own.
#[test]
fn a_template_build_killed_midway_is_cleaned_up_by_the_next() {
    let Some(m) = Moat::new() else { return };
    images::import(&m, "bb:v1");
    vm_agent::agent(); // the kernel in the shared cache
                       // A template store of its own: the kernel and the rest of the cache are shared read-only.
    let vmdir = tempfile::tempdir().unwrap();
    let shared = Path::new("/var/lib/moat/vm");
    for e in std::fs::read_dir(shared).unwrap().flatten() {
        if e.file_name() != "templates" {
            std::os::unix::fs::symlink(e.path(), vmdir.path().join(e.file_name())).unwrap();
        }
    }
    let templates = vmdir.path().join("templates");
    let run = |m: &Moat| {
        let mut c = m.command(&[
            "run",
            "--rm",
            "--isolation",
            "vm",
            "--network",
            "none",
            "bb:v1",
            "echo",
            "ok",
        ]);
        c.env("MOAT_VM_DIR", vmdir.path())
            .env("MOAT_AGENT_BIN", vm_agent::agent())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        c
    };
    let users_of = |dir: &Path| pids_where(|args| has(args, &dir.display().to_string()));
    let mut first = run(&m).spawn().unwrap();
    // Wait for the template's QEMU, then kill moat in the middle of the build.
    let deadline = Instant::now() + Duration::from_secs(60);
    let tmp = loop {
        let tmp = std::fs::read_dir(&templates).ok().and_then(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .find(|p| p.to_string_lossy().contains(".tmp-"))
        });
        if let Some(t) = tmp.filter(|t| !users_of(t).is_empty()) {
            break t;
        }
        assert!(Instant::now() < deadline, "no template build seen");
        std::thread::sleep(Duration::from_millis(20));
    };
    first.kill().unwrap();
    first.wait().unwrap();
    let orphans = users_of(&tmp);
    assert!(!orphans.is_empty(), "the template's QEMU went with moat");
    // Its run dir (sockets, jail): named by its `-chroot`.
    let jails: Vec<std::path::PathBuf> = orphans
        .iter()
        .filter_map(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
        .filter_map(|c| {
            let args: Vec<String> = c
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let i = args.iter().position(|a| a == "-chroot")?;
            args.get(i + 1).map(std::path::PathBuf::from)
        })
        .collect();
    assert!(
        !jails.is_empty(),
        "no -chroot in the template QEMU's command line"
    );
    // The next start of the shape cleans up, builds its template and runs.
    let o = run(&m).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        !tmp.exists(),
        "the half-built template {} is left",
        tmp.display()
    );
    for pid in orphans {
        wait_ended(pid, "the orphaned template QEMU");
    }
    for jail in &jails {
        let run = jail.parent().unwrap();
        assert!(
            !run.exists(),
            "the killed builder's run dir {} is left",
            run.display()
        );
    }
    let left: Vec<_> = std::fs::read_dir(&templates)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert_eq!(left.len(), 1, "one complete template: {left:?}");
    // The killed run's container record stays (no daemon noticed); `rm -f` removes it.
    for id in m.ok(&["ps", "-a", "-q"]).split_whitespace() {
        m.ok(&["rm", "-f", id]);
    }
    assert_eq!(m.ok(&["ps", "-a", "-q"]), "", "a container is left");
}

/// `kill -9` of `moat run -d` at several points of its create, VM and namespaces: `rm -f` of
/// what it left then succeeds and nothing is left (no QEMU, no mount, no runtime state, no
/// container directory, no cgroup). A kill before the record existed used to leave an unlisted
/// directory holding the rootfs mount.
#[test]
fn a_run_killed_midway_is_removed_by_rm_f() {
    let Some(m) = Moat::new() else { return };
    images::import(&m, "bb:v1");
    killed_midway(&m, "vm");
    killed_midway(&m, "namespaces");
}

fn killed_midway(m: &Moat, isolation: &str) {
    // Template and disk image first, so that the kills land in a clone's create.
    m.vm_ok(&[
        "run",
        "--rm",
        "--isolation",
        isolation,
        "--network",
        "none",
        "bb:v1",
        "echo",
        "ok",
    ]);
    let root = m.root().to_string_lossy().into_owned();
    for delay_ms in [20, 80, 200, 400] {
        let mut c = m.command(&[
            "run",
            "-d",
            "--isolation",
            isolation,
            "--network",
            "none",
            "bb:v1",
            "sleep",
            "60",
        ]);
        c.env("MOAT_AGENT_BIN", vm_agent::agent())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = c.spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap();
        child.wait().unwrap();
        // A monitor forked before the kill goes on (as a container's does when its client
        // dies): let it finish creating the container, or fail, before removing.
        wait_for(
            &format!("the monitor to settle ({isolation}) after a kill at {delay_ms} ms"),
            || {
                let ids = m.ok(&["ps", "-a", "-q"]);
                let running = !ids.trim().is_empty()
                    && ids.split_whitespace().all(|id| {
                        let v: serde_json::Value =
                            serde_json::from_str(&m.ok(&["inspect", id])).unwrap_or_default();
                        v["State"]["Status"] == "running"
                    });
                running || moat_procs(&root).is_empty()
            },
        );
        let mut full_ids = vec![];
        for id in m.ok(&["ps", "-a", "-q"]).split_whitespace() {
            let inspect: serde_json::Value = serde_json::from_str(&m.ok(&["inspect", id])).unwrap();
            full_ids.push(inspect["Id"].as_str().unwrap_or(id).to_owned());
            let o = m.cmd(&["rm", "-f", id]);
            assert!(
                o.status.success(),
                "rm -f {id} ({isolation}) after a kill at {delay_ms} ms: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        assert_eq!(m.ok(&["ps", "-a", "-q"]), "", "a container is left");
        wait_for(
            &format!("no QEMU or moat left ({isolation}) after a kill at {delay_ms} ms"),
            || qemus_of(&root).is_empty() && moat_procs(&root).is_empty(),
        );
        let runtime: Vec<_> = std::fs::read_dir(m.root().join("runtime"))
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(runtime.is_empty(), "runtime state left: {runtime:?}");
        let containers: Vec<_> = std::fs::read_dir(m.root().join("containers"))
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        let contents: Vec<_> = containers
            .iter()
            .flat_map(|c| std::fs::read_dir(m.root().join("containers").join(c)).into_iter())
            .flat_map(|rd| rd.flatten().map(|e| e.file_name()))
            .collect();
        assert!(
            containers.is_empty(),
            "container dirs left ({isolation}) after a kill at {delay_ms} ms: {containers:?} holding {contents:?}"
        );
        let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(&root))
            .map(str::to_owned)
            .collect();
        assert!(
            mounts.is_empty(),
            "mounts left ({isolation}) after a kill at {delay_ms} ms: {mounts:?}"
        );
        for id in &full_ids {
            for ctl in ["memory", "pids", "cpu", "unified", ""] {
                let cg = Path::new("/sys/fs/cgroup").join(ctl).join("moat").join(id);
                assert!(!cg.exists(), "cgroup {} left", cg.display());
            }
        }
    }
}

/// Pids of the processes whose command line (its arguments) `f` accepts, but ours.
fn pids_where(f: impl Fn(&[&[u8]]) -> bool) -> Vec<i32> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<i32>().ok()?;
            let c = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
            (pid != me && f(&args)).then_some(pid)
        })
        .collect()
}

fn has(args: &[&[u8]], needle: &str) -> bool {
    args.iter()
        .any(|a| a.windows(needle.len()).any(|w| w == needle.as_bytes()))
}

/// Pids of `moat` processes (a run or its monitor) of the store at `root`.
fn moat_procs(root: &str) -> Vec<i32> {
    pids_where(|args| {
        args.first().is_some_and(|a| a.ends_with(b"/moat"))
            && args
                .windows(2)
                .any(|w| w[0] == b"--root" && w[1] == root.as_bytes())
    })
}

/// Pids of QEMUs with `needle` in an argument (a store's path: its disk images are there).
fn qemus_of(needle: &str) -> Vec<i32> {
    pids_where(|args| {
        args.first().is_some_and(|a| a.starts_with(b"qemu-system")) && has(args, needle)
    })
}
