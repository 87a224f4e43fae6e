//! Terminals of VM containers (`io.moat.isolation=vm`, QEMU under TCG here): the pty is the
//! guest's, its bytes cross an agent port. `run` and `exec -t` without a console socket relay it
//! to the caller's terminal (`script` gives the test one); with `--console-socket` the caller gets
//! a host pty master, exactly as from the namespaces backend, and a relay process carries it
//! until the process exits. Checked: what the process sees (`tty`, `stty size`), resizes, the
//! exit status, the output through the master, and that nothing (QEMU, relay) is left after
//! `delete`.

mod common;
use common::support::run_deadline;
use common::*;
#[path = "support/vm_agent.rs"]
mod vm_agent;
use vm_agent::agent;

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::json;

fn vm_bundle(args: &[&str], terminal: bool) -> Bundle {
    let mut b = Bundle::new(args);
    b.spec["annotations"] = json!({"io.moat.isolation": "vm"});
    b.spec["process"]["terminal"] = json!(terminal);
    b.save();
    b
}

/// `moat-runtime --root <rt> ARGS` (as a shell command line), the agent binary in its
/// environment.
fn runtime_line(rt: &Rt, args: &str) -> String {
    format!(
        "MOAT_AGENT_BIN={} {BIN} --root {} {args}",
        agent().display(),
        rt.root.path().display()
    )
}

/// Run `shell` (a sh command line) with a pty on stdin/stdout (`script`).
fn in_pty(shell: &str) -> Output {
    run_deadline(
        Command::new("script").args(["-qec", shell, "/dev/null"]),
        Duration::from_secs(240),
        shell,
    )
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).replace('\r', "")
}

/// `moat-runtime ARGS`, stdio on files (a detached QEMU or relay would hold pipes open).
fn vm_ok(rt: &Rt, args: &[&str]) {
    let o = run_deadline(
        rt.cmd().env("MOAT_AGENT_BIN", agent()).args(args),
        Duration::from_secs(240),
        &format!("{args:?}"),
    );
    assert!(
        o.status.success(),
        "moat-runtime {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// No QEMU (its cmdline names the state dir) and no terminal relay of `id` is left.
fn assert_nothing_left(rt: &Rt, id: &str) {
    let dir = rt.root.path().join(id);
    let qemu = pids_with_cmdline(&dir.to_string_lossy());
    assert!(qemu.is_empty(), "processes left for {id}: {qemu:?}");
    let relays: Vec<i32> = pids_with_cmdline("vm-console-relay")
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(id))
        })
        .collect();
    assert!(
        relays.is_empty(),
        "terminal relays left for {id}: {relays:?}"
    );
    assert!(!dir.exists(), "state dir {} left", dir.display());
}

#[test]
fn vm_run_with_a_terminal_without_console_socket() {
    let rt = Rt::new();
    let mut b = vm_bundle(
        &["sh", "-c", "tty; stty size; echo out-$((6*7)); exit 3"],
        true,
    );
    b.spec["process"]["consoleSize"] = json!({"height": 40, "width": 120});
    b.save();
    let id = id("vmttyrun");
    let t = Instant::now();
    // script's own pty has no size (0x0): the spec's consoleSize stays.
    let o = in_pty(&runtime_line(
        &rt,
        &format!("run --bundle {} {id}", b.path().display()),
    ));
    eprintln!("run -t: {:?}", t.elapsed());
    let out = text(&o);
    assert_eq!(o.status.code(), Some(3), "{out}");
    assert!(out.contains("/dev/pts/0\n"), "{out}");
    assert!(out.contains("40 120\n"), "{out}");
    assert!(out.contains("out-42\n"), "{out}");
    assert_clean(&rt, &id, Some(b.path()));
    assert_nothing_left(&rt, &id);
}

#[test]
fn vm_exec_tty_sees_a_pts_and_follows_the_callers_size() {
    let rt = Rt::new();
    let b = vm_bundle(&["sleep", "600"], false);
    let id = id("vmttyexec");
    vm_ok(
        &rt,
        &["create", "--bundle", b.path().to_str().unwrap(), &id],
    );
    vm_ok(&rt, &["start", &id]);
    // tty, exit status, and the caller's size copied at start.
    let t = Instant::now();
    let o = in_pty(&format!(
        "stty rows 33 cols 77; {}",
        runtime_line(&rt, &format!("exec -t {id} sh -c 'tty; stty size; exit 4'"))
    ));
    eprintln!("exec -t (tty; stty size): {:?}", t.elapsed());
    let out = text(&o);
    assert_eq!(o.status.code(), Some(4), "{out}");
    // (script may type a NUL at its stdin's end: the guest's echo shows it as ^@.)
    assert!(
        out.lines()
            .any(|l| l.trim_start_matches("^@").starts_with("/dev/pts/")),
        "not a pts: {out}"
    );
    assert!(out.contains("33 77\n"), "{out}");
    // Latency of a terminal exec (attach, exec, exit) against one without a terminal.
    for tty in ["-t ", ""] {
        let t = Instant::now();
        for _ in 0..3 {
            let o = in_pty(&runtime_line(&rt, &format!("exec {tty}{id} true")));
            assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        }
        eprintln!("exec {tty}{id} true: {:?} each", t.elapsed() / 3);
    }
    // A resize of the caller's terminal (SIGWINCH to the runtime) reaches the guest's pty.
    let exec = runtime_line(
        &rt,
        &format!(
            "exec -t {id} sh -c 'stty size; i=0; while [ \"$(stty size)\" = \"10 20\" ] && \
             [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done; stty size'"
        ),
    );
    let o = in_pty(&format!(
        "stty rows 10 cols 20; {exec} </dev/tty & sleep 4; stty rows 50 cols 90; kill -WINCH $!; \
         wait $!; echo status=$?"
    ));
    let out = text(&o);
    assert!(out.contains("10 20\n50 90\n"), "{out}");
    assert!(out.contains("status=0\n"), "{out}");
    // Typed input goes through the guest's line discipline (echo, then the shell's answer).
    let o = run_deadline(
        Command::new("sh").args([
            "-c",
            &format!(
                "printf 'echo typed-$((6*7))\\nexit 6\\n' | script -qec \"{}\" /dev/null",
                runtime_line(&rt, &format!("exec -t {id} sh"))
            ),
        ]),
        Duration::from_secs(240),
        "exec -t sh with typed input",
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(6), "{out}");
    assert!(out.contains("typed-42\n"), "{out}");
    vm_ok(&rt, &["delete", "--force", &id]);
    assert_clean(&rt, &id, Some(b.path()));
    assert_nothing_left(&rt, &id);
}

/// The bytes read from a master, by one thread.
struct MasterReader(std::sync::mpsc::Receiver<Vec<u8>>);

impl MasterReader {
    fn new(master: &std::fs::File) -> MasterReader {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut r = master.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match r.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        MasterReader(rx)
    }

    /// Read until `want` shows up (or fail after `limit`); returns what was read.
    fn until(&self, want: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        let mut seen = String::new();
        while !seen.contains(want) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.0.recv_timeout(left) {
                Ok(b) => seen.push_str(&String::from_utf8_lossy(&b)),
                Err(_) => panic!("{want:?} not read from the master within {limit:?}: {seen:?}"),
            }
        }
        seen
    }
}

#[test]
fn vm_console_socket_gets_a_host_master() {
    let rt = Rt::new();
    let mut b = vm_bundle(&["sh"], true);
    b.spec["process"]["consoleSize"] = json!({"height": 24, "width": 80});
    b.save();
    let id = id("vmttysock");
    let sockdir = tempfile::tempdir().unwrap();
    let sock = sockdir.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let accept = std::thread::spawn(move || accept_fd(&listener));
    let t = Instant::now();
    vm_ok(
        &rt,
        &[
            "create",
            "--console-socket",
            sock.to_str().unwrap(),
            "--bundle",
            b.path().to_str().unwrap(),
            &id,
        ],
    );
    eprintln!("create with a console socket: {:?}", t.elapsed());
    let (name, master) = accept.join().unwrap();
    // The payload names the host pty, as runc's does.
    let name = String::from_utf8_lossy(&name).into_owned();
    assert!(name.starts_with("/dev/pts/"), "{name}");
    let ws = moat_sys::fd::get_winsize(master.as_fd()).unwrap();
    assert_eq!((ws.ws_row, ws.ws_col), (24, 80));
    let mut master = std::fs::File::from(master);
    let out = MasterReader::new(&master);
    vm_ok(&rt, &["start", &id]);
    assert_eq!(rt.status(&id), "running");
    // The container's shell answers what is typed on the master.
    master.write_all(b"tty; echo typed-$((6*7))\n").unwrap();
    let t = Instant::now();
    let seen = out.until("typed-42", Duration::from_secs(60));
    eprintln!("first answer through the master: {:?}", t.elapsed());
    assert!(seen.contains("/dev/pts/0"), "{seen:?}");
    // A keystroke's round trip: master -> relay -> agent -> the guest's pty echoes it -> back.
    let t = Instant::now();
    for k in ["a", "b", "c", "d", "e"] {
        master.write_all(k.as_bytes()).unwrap();
        out.until(k, Duration::from_secs(10));
    }
    eprintln!(
        "keystroke echo through the master: {:?} each",
        t.elapsed() / 5
    );
    // ^U: the shell's line is empty again.
    master.write_all(b"\x15").unwrap();
    // A resize of the host master (what conmon and the shims do) reaches the guest's pty.
    let ws = nix::pty::Winsize {
        ws_row: 50,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    moat_sys::fd::set_winsize(master.as_fd(), &ws).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        master
            .write_all(b"stty size; echo done-$((1+1))\n")
            .unwrap();
        let seen = out.until("done-2", Duration::from_secs(30));
        if seen.contains("50 100") {
            break;
        }
        assert!(Instant::now() < deadline, "no resize seen: {seen:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The relay sleeps while the shell prints nothing: its only timer is the idle reclaim's
    // look at QEMU every 2 s, then 10 s (it used to look at the terminal every 10-50 ms), and
    // the host pty is its controlling terminal (the resize came as SIGWINCH).
    let relays: Vec<i32> = std::fs::read_dir(rt.root.path().join(&id).join("relays"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    assert_eq!(relays.len(), 1, "{relays:?}");
    let switches = || -> u64 {
        std::fs::read_dir(format!("/proc/{}/task", relays[0]))
            .unwrap()
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
            .flat_map(|st| {
                st.lines()
                    .filter(|l| l.contains("ctxt_switches"))
                    .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .collect::<Vec<_>>()
            })
            .sum()
    };
    let before = switches();
    std::thread::sleep(Duration::from_secs(2));
    let idle = switches() - before;
    eprintln!("relay context switches in 2 s idle: {idle}");
    assert!(idle < 10, "the idle relay woke {idle} times in 2 s");
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", relays[0])).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // Fields after the name: state ppid pgrp session tty_nr ...
    assert_eq!(
        fields[3],
        relays[0].to_string(),
        "the relay leads its session: {stat}"
    );
    assert_ne!(
        fields[4], "0",
        "the relay has a controlling terminal: {stat}"
    );
    // `exec -t` with a console socket, detached: another master, its own relay.
    let sock2 = sockdir.path().join("exec.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock2).unwrap();
    let accept = std::thread::spawn(move || accept_fd(&listener));
    vm_ok(
        &rt,
        &[
            "exec",
            "-d",
            "-t",
            "--console-socket",
            sock2.to_str().unwrap(),
            &id,
            "sh",
            "-c",
            "echo exec-out-$((7*6)); sleep 600",
        ],
    );
    let (_, exec_master) = accept.join().unwrap();
    let exec_master = std::fs::File::from(exec_master);
    MasterReader::new(&exec_master).until("exec-out-42", Duration::from_secs(60));
    // The init's exit ends the container (and its VM); its relay goes too.
    master.write_all(b"exit 5\n").unwrap();
    rt.wait_status(&id, "stopped");
    vm_ok(&rt, &["delete", &id]);
    assert_clean(&rt, &id, Some(b.path()));
    assert_nothing_left(&rt, &id);
}

/// `run` in the foreground with `--console-socket` (runc's form for a caller that keeps the
/// master, e.g. a script driving a pty): the runtime relays in its own process and exits with
/// the container's status.
#[test]
fn vm_run_in_the_foreground_with_a_console_socket() {
    let rt = Rt::new();
    let mut b = vm_bundle(&["sh", "-c", "tty; stty size; exit 7"], true);
    b.spec["process"]["consoleSize"] = json!({"height": 30, "width": 90});
    b.save();
    let id = id("vmttyfg");
    let sockdir = tempfile::tempdir().unwrap();
    let sock = sockdir.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let accept = std::thread::spawn(move || {
        let (_, master) = accept_fd(&listener);
        let master = std::fs::File::from(master);
        MasterReader::new(&master).until("30 90", Duration::from_secs(120))
    });
    let o = run_deadline(
        rt.cmd().env("MOAT_AGENT_BIN", agent()).args([
            "run",
            "--console-socket",
            sock.to_str().unwrap(),
            "--bundle",
            b.path().to_str().unwrap(),
            &id,
        ]),
        Duration::from_secs(240),
        "run --console-socket",
    );
    assert_eq!(
        o.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let seen = accept.join().unwrap();
    assert!(seen.contains("/dev/pts/0"), "{seen:?}");
    assert_clean(&rt, &id, Some(b.path()));
    assert_nothing_left(&rt, &id);
}

#[test]
fn vm_terminal_without_console_socket_is_refused_when_detached() {
    let rt = Rt::new();
    let b = vm_bundle(&["sh"], true);
    let id = id("vmttyd");
    for args in [&["run", "-d"][..], &["create"][..]] {
        let o = rt
            .cmd()
            .env("MOAT_AGENT_BIN", agent())
            .args(args)
            .arg("--bundle")
            .arg(b.path())
            .arg(&id)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(
            err.starts_with("error: ")
                && err.lines().count() == 1
                && err.contains("cannot allocate tty"),
            "{err}"
        );
        assert_nothing_left(&rt, &id);
    }
}
