//! The verbs that act on a running VM container through its agent besides the lifecycle: `exec`
//! (a process in the guest container, followed in the foreground unless detached), `ps` (the
//! container's guest processes) and `events` (stats of its cgroup in the guest, OOM kills).

use std::path::Path;
use std::time::{Duration, Instant};

use moat_agent_proto::{ContainerStats, GuestMessage, GuestProcess};
use moat_container::state::Status;
use moat_container::Store;
use oci_spec::runtime::Process;

use super::error::{Result, VmBackendError};
use super::follow::Local;
use super::state::VmState;

/// The process of the container's own config, the base of an `exec` built from flags.
pub fn base_process(store: &Store, id: &str) -> Result<Process> {
    let st = VmState::load(store, id)?;
    let bundle = moat_container::spec::load_bundle(&st.bundle)?;
    bundle
        .spec
        .process()
        .clone()
        .ok_or_else(|| VmBackendError::Invalid(format!("container {id} has no process")))
}

/// `exec`: run `process` in container `id`. Detached: return at once (0); else forward stdin,
/// output and signals and return its status (128+N when killed by signal N). With
/// `process.terminal` its pty (in the guest) is shown on our terminal, or on a host pty whose
/// master goes to `console_socket` (detached: a relay process carries it, see `terminal`).
/// `pid_file` gets the host pid of that relay, which exits with the process's status (what
/// conmon waits for); any other process has no host pid, so a pid file is refused there.
pub fn exec(
    store: &Store,
    id: &str,
    process: &Process,
    detach: bool,
    console_socket: Option<&Path>,
    pid_file: Option<&Path>,
) -> Result<i32> {
    let terminal = process.terminal().unwrap_or(false);
    if terminal && detach && console_socket.is_none() {
        return Err(super::lifecycle::no_console_socket());
    }
    let relayed = terminal && detach;
    if pid_file.is_some() && !relayed {
        return Err(VmBackendError::Unsupported(format!(
            "exec in VM container {id}: --pid-file needs a host process, which only a detached \
             exec with a terminal has (its relay); this process runs in the guest"
        )));
    }
    let st = VmState::load(store, id)?;
    st.require("exec in", Status::Running)?;
    let json = serde_json::to_string(process).map_err(|source| VmBackendError::Json {
        path: "(process)".into(),
        source,
    })?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let exec_id = format!("exec-{}-{nanos}", std::process::id());
    let size = super::terminal::console_size(process);
    if let (true, true, Some(sock)) = (terminal, detach, console_socket) {
        let job = super::terminal::RelayJob::Exec {
            exec_id: &exec_id,
            process_json: &json,
        };
        let (relay, _) = super::terminal::spawn_relay(store, id, job, sock, size)?;
        if let Some(p) = pid_file {
            std::fs::write(p, relay.to_string()).map_err(VmBackendError::io("write", p))?;
        }
        return Ok(0);
    }
    let mut agent = st.attach()?;
    agent
        .exec(id, &exec_id, &json, !detach)
        .map_err(VmBackendError::vm(format!("exec in container {id}")))?;
    if detach {
        return Ok(0);
    }
    let status = if terminal {
        super::terminal::follow_terminal(
            &mut agent,
            id,
            Some(&exec_id),
            console_socket,
            size,
            true,
        )?
    } else {
        super::follow::follow(&mut agent, id, Some(&exec_id), Local::Stdio { stdin: true })?
    };
    Ok(status.as_shell_code())
}

/// `ps`: the container's processes, guest pids.
pub fn ps(store: &Store, id: &str) -> Result<Vec<GuestProcess>> {
    let st = VmState::load(store, id)?;
    if st.status() == Status::Stopped {
        return Ok(vec![]);
    }
    st.attach()?
        .processes(id)
        .map_err(VmBackendError::vm(format!(
            "list the processes of container {id}"
        )))
}

/// The container's cgroup stats in the guest, shaped as the namespaces backend's.
pub fn stats(store: &Store, id: &str) -> Result<moat_cgroups::Stats> {
    let st = VmState::load(store, id)?;
    if st.status() == Status::Stopped {
        return Err(VmBackendError::BadStatus {
            id: id.into(),
            action: "read the stats of",
            status: Status::Stopped,
        });
    }
    let s = st
        .attach()?
        .stats(id)
        .map_err(VmBackendError::vm(format!("stats of container {id}")))?;
    Ok(to_cgroup_stats(&s))
}

fn to_cgroup_stats(s: &ContainerStats) -> moat_cgroups::Stats {
    let mut out = moat_cgroups::Stats::default();
    out.cpu.usage.total = s.cpu_usage_ns;
    out.memory.usage.usage = s.memory_usage_bytes;
    out.memory.usage.max = s.memory_max_usage_bytes;
    out.memory.usage.limit = s.memory_limit_bytes;
    out.pids.current = s.pids_current;
    out.pids.limit = s.pids_limit;
    out
}

/// `events`: one stats event (`stats_once`), or, on one agent connection until the container
/// stops, a stats event every `interval` and an `oom` event whenever the agent reports that the
/// OOM killer killed a process of the container (the namespaces backend's shapes).
pub fn events(store: &Store, id: &str, stats_once: bool, interval: Duration) -> Result<()> {
    use std::io::Write;
    let event = |s: moat_cgroups::Stats| serde_json::json!({"type": "stats", "id": id, "data": s});
    if stats_once {
        println!("{}", event(stats(store, id)?));
        return Ok(());
    }
    let st = VmState::load(store, id)?;
    if st.status() == Status::Stopped {
        return Ok(());
    }
    let mut agent = st.attach()?;
    // Once the container stopped (its VM powers off), the connection ends: not an error.
    let ended = |e: moat_vm::VmError| -> Result<()> {
        if st.wait_gone(Duration::from_secs(2)) {
            Ok(())
        } else {
            Err(VmBackendError::vm(format!("events of container {id}"))(e))
        }
    };
    let mut next_stats = Instant::now();
    loop {
        let now = Instant::now();
        if now >= next_stats {
            next_stats = now + interval;
            match agent.stats(id) {
                Ok(s) => println!("{}", event(to_cgroup_stats(&s))),
                Err(e) => return ended(e),
            }
            let _ = std::io::stdout().flush();
        }
        let wait = next_stats.saturating_duration_since(Instant::now());
        match agent.next_event(wait.min(Duration::from_millis(500))) {
            Ok(Some(GuestMessage::Oom { container_id })) if container_id == id => {
                println!("{}", serde_json::json!({"type": "oom", "id": id}));
                let _ = std::io::stdout().flush();
            }
            Ok(_) => {}
            Err(e) => return ended(e),
        }
    }
}
