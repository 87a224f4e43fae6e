//! runc's first workflow: `spec` (terminal true) then `run` in the foreground without a console
//! socket. The runtime relays the pty itself: what the process saw (`tty`, `stty size`, the owner
//! of its pts), the exit status, the caller's terminal left as it was, SIGWINCH, piped stdin with
//! its end-of-file, `exec -t`, and the refusal of a detached terminal without a socket. The same
//! checks run against runc where runc behaves the same.

mod common;
use std::process::Command;
use std::time::Duration;

use common::support::{run_deadline, which};
use common::*;
use serde_json::json;

/// Run `shell` (a sh command line) with a pty on stdin/stdout (`script`), stdin of script null.
fn in_pty(shell: &str) -> std::process::Output {
    run_deadline(
        Command::new("script").args(["-qec", shell, "/dev/null"]),
        Duration::from_secs(60),
        shell,
    )
}

/// A bundle as `spec` writes it (terminal true), for the user 1000:1000, running `script`.
fn terminal_bundle(script: &str) -> Bundle {
    let mut b = Bundle::new(&["sh", "-c", script]);
    b.spec["process"]["terminal"] = json!(true);
    b.spec["process"]["user"] = json!({"uid": 1000, "gid": 1000});
    b.save();
    b
}

fn moat_run(rt: &Rt, b: &Bundle, id: &str) -> String {
    format!(
        "{BIN} --root {} run --bundle {} {id}",
        rt.root.path().display(),
        b.path().display()
    )
}

fn text(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).replace('\r', "")
}

#[test]
fn default_spec_keeps_terminal_true() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(BIN)
        .args(["spec", "--bundle"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success());
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(spec["process"]["terminal"], json!(true));
}

#[test]
fn run_in_a_terminal_without_console_socket_like_runc() {
    let rt = Rt::new();
    let b = terminal_bundle("tty; stat -c %u:%g $(tty); exit 3");
    let id = id("tty");
    let o = in_pty(&moat_run(&rt, &b, &id));
    let out = text(&o);
    assert_eq!(o.status.code(), Some(3), "{out}");
    assert!(out.contains("/dev/pts/0\n"), "{out}");
    // runc's fixStdioPermissions: the pts belongs to the process uid, devpts' gid=5 stays.
    assert!(out.contains("1000:5\n"), "{out}");
    assert_clean(&rt, &id, Some(b.path()));
    if let Some(runc) = which("runc") {
        let root = tempfile::tempdir().unwrap();
        let o = in_pty(&format!(
            "cd {} && {} --root {} run {id}",
            b.path().display(),
            runc.display(),
            root.path().display()
        ));
        let theirs = text(&o);
        assert_eq!(o.status.code(), Some(3), "runc: {theirs}");
        for line in ["/dev/pts/0\n", "1000:5\n"] {
            assert!(theirs.contains(line), "runc printed {theirs:?}");
        }
    }
}

#[test]
fn console_size_from_spec_or_from_the_callers_terminal() {
    let rt = Rt::new();
    let mut b = terminal_bundle("stty size");
    b.spec["process"]["consoleSize"] = json!({"height": 40, "width": 120});
    b.save();
    let id = id("ttysz");
    // The caller's terminal has no size (script's pty is 0x0): the spec's size stays.
    let o = in_pty(&moat_run(&rt, &b, &id));
    assert!(text(&o).contains("40 120\n"), "{}", text(&o));
    // A sized terminal is copied to the pty, as runc does.
    let o = in_pty(&format!("stty rows 33 cols 77; {}", moat_run(&rt, &b, &id)));
    assert!(text(&o).contains("33 77\n"), "{}", text(&o));
    // SIGWINCH to the runtime copies the new size (sh gives a background job /dev/null as stdin
    // unless told otherwise).
    b.args(&["sh", "-c", "stty size; sleep 2; stty size"]);
    let o = in_pty(&format!(
        "stty rows 10 cols 20; {} </dev/tty & sleep 1; stty rows 50 cols 90; kill -WINCH $!; wait $!",
        moat_run(&rt, &b, &id)
    ));
    // Under parallel load script(1)'s pty now and then echoes a NUL (`^@`) into the transcript
    // around the resize; what is checked is the two sizes the process printed, in order.
    let out = text(&o).replace("^@", "").replace('\0', "");
    assert!(out.contains("10 20\n50 90\n"), "{out}");
    assert_clean(&rt, &id, Some(b.path()));
}

#[test]
fn callers_terminal_is_restored() {
    let rt = Rt::new();
    let b = terminal_bundle("exit 0");
    let id = id("ttyraw");
    let o = in_pty(&format!(
        "stty -g; {} ; echo; stty -g",
        moat_run(&rt, &b, &id)
    ));
    let out = text(&o);
    let modes: Vec<&str> = out.lines().filter(|l| l.contains(':')).collect();
    assert_eq!(modes.len(), 2, "{out}");
    assert_eq!(modes[0], modes[1], "the terminal mode changed: {out}");
    assert_clean(&rt, &id, Some(b.path()));
}

#[test]
fn piped_stdin_reaches_the_terminal_and_its_end() {
    let rt = Rt::new();
    let b = terminal_bundle("cat >/tmp/got; echo got-eof; tty");
    let id = id("ttypipe");
    let o = run_deadline(
        Command::new("sh").args([
            "-c",
            &format!("printf 'one\\ntwo' | {}", moat_run(&rt, &b, &id)),
        ]),
        Duration::from_secs(60),
        "run with piped stdin",
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("got-eof\n/dev/pts/0"), "{out}");
    assert_clean(&rt, &id, Some(b.path()));
}

#[test]
fn detached_terminal_without_console_socket_is_refused() {
    let rt = Rt::new();
    let b = terminal_bundle("exit 0");
    let id = id("ttyd");
    for args in [&["run", "-d"][..], &["create"][..]] {
        let o = rt
            .cmd()
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
                && err.contains("cannot allocate tty")
                && err.contains("without setting console socket"),
            "{err}"
        );
        assert_clean(&rt, &id, Some(b.path()));
    }
}

#[test]
fn exec_tty_without_console_socket() {
    let rt = Rt::new();
    let b = Bundle::new(&["sleep", "1000"]);
    let id = id("exectty");
    rt.create(&b, &id);
    rt.ok(&["start", &id]);
    let o = in_pty(&format!(
        "{BIN} --root {} exec -t {id} sh -c 'tty; exit 4'",
        rt.root.path().display()
    ));
    let out = text(&o);
    assert_eq!(o.status.code(), Some(4), "{out}");
    assert!(out.contains("/dev/pts/"), "{out}");
    // The pts belongs to the exec'd process's user, as runc's fixStdioPermissions leaves it.
    let o = in_pty(&format!(
        "{BIN} --root {} exec -t -u 1000:1000 {id} sh -c 'stat -c %u $(tty)'",
        rt.root.path().display()
    ));
    assert!(text(&o).contains("1000\n"), "{}", text(&o));
    let o = rt.out(&["exec", "-d", "-t", &id, "true"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("cannot allocate tty"),
        "{err}"
    );
    rt.ok(&["delete", "--force", &id]);
    assert_clean(&rt, &id, Some(b.path()));
}

/// The README's runc-style example, exactly: `spec` unchanged, then `run` in a terminal; the
/// shell reads what is typed (here piped into `script`) and its exit status comes back.
#[test]
fn readme_spec_then_run_unchanged() {
    let rt = Rt::new();
    let b = Bundle::new(&["true"]);
    std::fs::remove_file(b.path().join("config.json")).unwrap();
    let id = id("readme");
    let root = rt.root.path().display();
    let inner = format!(
        "cd {} && {BIN} --root {root} spec && {BIN} --root {root} run {id}",
        b.path().display()
    );
    let o = run_deadline(
        Command::new("sh").args([
            "-c",
            &format!("printf 'echo hi-$((6*7))\\nexit 7\\n' | script -qec '{inner}' /dev/null"),
        ]),
        Duration::from_secs(60),
        "spec && run",
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(7), "{out}");
    assert!(out.contains("hi-42\n"), "{out}");
    assert_clean(&rt, &id, Some(b.path()));
}

/// Signals sent to the runtime reach the container's process; the caller's terminal is restored
/// whatever way the container ends (here killed by SIGKILL: status 137).
#[test]
fn signals_are_forwarded_and_the_terminal_restored() {
    let rt = Rt::new();
    let b = terminal_bundle("trap 'echo got-term; exit 9' TERM; sleep 10 & wait");
    let id = id("ttysig");
    let run = moat_run(&rt, &b, &id);
    let o = in_pty(&format!(
        "stty -g; {run} </dev/tty & sleep 1; kill -TERM $!; wait $!; echo status=$?; stty -g"
    ));
    let out = text(&o);
    assert!(out.contains("got-term\n"), "{out}");
    assert!(out.contains("status=9\n"), "{out}");
    let modes: Vec<&str> = out
        .lines()
        .filter(|l| l.matches(':').count() > 10)
        .collect();
    assert_eq!(modes.len(), 2, "{out}");
    assert_eq!(modes[0], modes[1], "the terminal mode changed: {out}");
    let b = terminal_bundle("sleep 10");
    let o = in_pty(&format!(
        "stty -g; {} </dev/tty & sleep 1; {BIN} --root {} kill {id} KILL; wait $!; echo status=$?; stty -g",
        moat_run(&rt, &b, &id),
        rt.root.path().display()
    ));
    let out = text(&o);
    assert!(out.contains("status=137\n"), "{out}");
    let modes: Vec<&str> = out
        .lines()
        .filter(|l| l.matches(':').count() > 10)
        .collect();
    assert_eq!(modes.len(), 2, "{out}");
    assert_eq!(modes[0], modes[1], "the terminal mode changed: {out}");
    assert_clean(&rt, &id, Some(b.path()));
}
