//! Running OCI hooks: the hook's path, args and env, the container state JSON on its stdin, its
//! output captured, and its timeout enforced (the hook is killed when it expires).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;

use crate::error::{ContainerError, Result};

/// Whether the spec has a hook that runs while the container is created or started from the
/// init's side: prestart and createRuntime (run by the runtime when the init asks), createContainer
/// and startContainer (run by the init, which needs the state JSON from the runtime for them).
/// Without any, the init skips that round trip to the runtime.
pub fn any_during_create(spec: &oci_spec::runtime::Spec) -> bool {
    let Some(h) = spec.hooks().as_ref() else {
        return false;
    };
    [
        h.prestart(),
        h.create_runtime(),
        h.create_container(),
        h.start_container(),
    ]
    .iter()
    .any(|l| l.as_ref().is_some_and(|v| !v.is_empty()))
}

/// Run `hooks` in order, stopping at the first failure. A hook gets exactly its `env`.
pub fn run_all(kind: &'static str, hooks: Option<&Vec<Hook>>, state_json: &str) -> Result<()> {
    run_hooks(kind, hooks, state_json, None)
}

/// The hooks the init runs inside the container (createContainer, startContainer): a hook without
/// an `env` gets the container process's environment, as runc and youki give it; one with an
/// `env` gets exactly that.
pub fn run_all_in_container(
    kind: &'static str,
    hooks: Option<&Vec<Hook>>,
    state_json: &str,
    process_env: &[String],
) -> Result<()> {
    run_hooks(kind, hooks, state_json, Some(process_env))
}

fn run_hooks(
    kind: &'static str,
    hooks: Option<&Vec<Hook>>,
    state_json: &str,
    default_env: Option<&[String]>,
) -> Result<()> {
    for h in hooks.map(|v| v.as_slice()).unwrap_or_default() {
        run_one(kind, h, state_json, default_env)?;
    }
    Ok(())
}

fn run_one(
    kind: &'static str,
    hook: &Hook,
    state_json: &str,
    default_env: Option<&[String]>,
) -> Result<()> {
    let fail = |message: String| ContainerError::Hook {
        kind,
        path: hook.path().clone(),
        message,
    };
    let mut cmd = Command::new(hook.path());
    if let Some(args) = hook.args() {
        if let Some((first, rest)) = args.split_first() {
            std::os::unix::process::CommandExt::arg0(&mut cmd, first);
            cmd.args(rest);
        }
    }
    cmd.env_clear();
    let env = match (hook.env(), default_env) {
        (Some(env), _) => env.as_slice(),
        (None, Some(env)) => env,
        (None, None) => &[],
    };
    for kv in env {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| fail(format!("start: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin gets EPIPE: not an error.
        let _ = stdin.write_all(state_json.as_bytes());
    }
    let timeout = hook
        .timeout()
        .filter(|t| *t > 0)
        .map(|t| Duration::from_secs(t as u64));
    let start = Instant::now();
    let mut delay = Duration::from_micros(200);
    let status = loop {
        match child.try_wait().map_err(|e| fail(format!("wait: {e}")))? {
            Some(st) => break st,
            None => {
                if let Some(t) = timeout {
                    if start.elapsed() >= t {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(fail(format!(
                            "timed out after {}s and was killed",
                            t.as_secs()
                        )));
                    }
                }
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(20));
            }
        }
    };
    let out = child
        .wait_with_output()
        .map_err(|e| fail(format!("collect output: {e}")))?;
    if !status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        return Err(fail(format!(
            "exited with {status}; stdout: {:?}, stderr: {:?}",
            stdout.trim(),
            stderr.trim()
        )));
    }
    Ok(())
}
