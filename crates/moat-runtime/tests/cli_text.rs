//! The text runc users and their scripts read: `--help` of the top level and of every command with
//! runc's NAME and USAGE sections, `--version` (`moat-runtime version X`, then `spec: 1.x`), and
//! `--debug` lines in runc's `time=... level=debug msg=...` form (JSON with `--log-format json`),
//! also for `exec`.

mod common;
use common::*;

const COMMANDS: &[&str] = &[
    "create", "start", "state", "kill", "delete", "run", "list", "spec", "features", "pause",
    "resume", "update", "ps", "events", "exec",
];

#[test]
fn help_has_runc_name_and_usage_sections() {
    let rt = Rt::new();
    let top = rt.ok(&["--help"]);
    assert!(top.starts_with("NAME:\n   moat-runtime - "), "{top}");
    assert!(top.contains("\nUSAGE:\n   moat-runtime "), "{top}");
    for c in COMMANDS {
        for flag in ["--help", "-h"] {
            let out = rt.ok(&[c, flag]);
            assert!(
                out.starts_with(&format!("NAME:\n   moat-runtime {c} - ")),
                "{c} {flag}: {out}"
            );
            assert!(
                out.contains(&format!("\nUSAGE:\n   moat-runtime {c}")),
                "{c} {flag}: {out}"
            );
        }
    }
}

#[test]
fn version_first_line_then_spec() {
    let rt = Rt::new();
    for flag in ["--version", "-v"] {
        let out = rt.ok(&[flag]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            format!("moat-runtime version {}", env!("CARGO_PKG_VERSION"))
        );
        assert!(lines[1].starts_with("spec: 1."), "{out}");
    }
}

/// Every line of `err` is a runc text debug line, or the final `error:` line.
fn assert_text_debug(err: &str) -> usize {
    let mut n = 0;
    for l in err.lines() {
        if l.starts_with("error: ") {
            continue;
        }
        let rest = l
            .strip_prefix("time=\"")
            .and_then(|r| r.split_once("\" level=debug msg=\""))
            .unwrap_or_else(|| panic!("not a runc debug line: {l:?}"));
        assert!(rest.1.ends_with('"'), "{l:?}");
        n += 1;
    }
    n
}

#[test]
fn debug_lines_in_runc_form() {
    let rt = Rt::new();
    let o = rt.out(&["--debug", "list"]);
    assert!(assert_text_debug(&String::from_utf8_lossy(&o.stderr)) >= 1);
    let o = rt.out(&["--debug", "--log-format", "json", "state", "nope"]);
    let err = String::from_utf8_lossy(&o.stderr);
    let mut n = 0;
    for l in err.lines().filter(|l| !l.starts_with("error: ")) {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["level"], "debug", "{l}");
        assert!(v["msg"].is_string() && v["time"].is_string(), "{l}");
        n += 1;
    }
    assert!(n >= 1, "{err}");
    assert!(err.lines().last().unwrap().starts_with("error: "), "{err}");
    // exec, into a log file.
    let b = Bundle::new(&["sleep", "1000"]);
    let id = id("dbg");
    rt.create(&b, &id);
    rt.ok(&["start", &id]);
    let log = b.path().join("debug.log");
    let o = rt.out(&[
        "--debug",
        "--log",
        log.to_str().unwrap(),
        "exec",
        &id,
        "true",
    ]);
    assert!(o.status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(assert_text_debug(&text) >= 2, "{text}");
    assert!(text.contains("exec in container"), "{text}");
    rt.ok(&["delete", "--force", &id]);
    assert_clean(&rt, &id, Some(b.path()));
}
