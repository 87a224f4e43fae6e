//! The shared shim worker's record of each task, from which a restarted worker re-adopts the
//! pods (see `keeper`): a JSON file per container in `<hash>.tasks/` (`shared::tasks_dir`),
//! written whenever the container or one of its exec'd processes changes (created, started,
//! exited) and removed at its Delete. The rest of a container's state (its status, cgroup, pids)
//! is moat's own, in the store, and survives the worker anyway.
//!
//! Not recorded: a terminal's pty master, which was the dead worker's (see docs/kubernetes.md);
//! OOM counts (re-read from the cgroup).
//!
//! What it must never do: write anything for a per-pod shim, or fail a request because a record
//! could not be written (the request succeeded; a lost record costs re-adoption only, logged).

use std::collections::HashMap;
use std::path::Path;

use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use serde::{Deserialize, Serialize};

use super::{Ctr, Proc};

#[derive(Serialize, Deserialize)]
struct ProcRecord {
    pid: i32,
    started: bool,
    /// Exit status, seconds and nanoseconds of the exit time.
    exit: Option<(u32, i64, i32)>,
    stdin: String,
    stdout: String,
    stderr: String,
    terminal: bool,
    spec: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct CtrRecord {
    bundle: String,
    rootfs_mounted: bool,
    init: ProcRecord,
    execs: HashMap<String, ProcRecord>,
}

impl From<&Proc> for ProcRecord {
    fn from(p: &Proc) -> ProcRecord {
        ProcRecord {
            pid: p.pid,
            started: p.started,
            exit: p.exit.as_ref().map(|(c, t)| (*c, t.seconds, t.nanos)),
            stdin: p.stdin.clone(),
            stdout: p.stdout.clone(),
            stderr: p.stderr.clone(),
            terminal: p.terminal,
            spec: p.spec.clone(),
        }
    }
}

impl From<ProcRecord> for Proc {
    fn from(r: ProcRecord) -> Proc {
        Proc {
            pid: r.pid,
            started: r.started,
            exit: r.exit.map(|(c, seconds, nanos)| {
                (
                    c,
                    Timestamp {
                        seconds,
                        nanos,
                        ..Default::default()
                    },
                )
            }),
            stdin: r.stdin,
            stdout: r.stdout,
            stderr: r.stderr,
            terminal: r.terminal,
            console: None,
            spec: r.spec,
        }
    }
}

/// Record container `id` (`Some`), or forget it (`None`: deleted).
pub(super) fn save(id: &str, c: Option<&Ctr>) {
    let Some(dir) = crate::shared::tasks_dir() else {
        return;
    };
    let path = dir.join(id);
    let Some(c) = c else {
        let _ = std::fs::remove_file(&path);
        return;
    };
    let rec = CtrRecord {
        bundle: c.bundle.clone(),
        rootfs_mounted: c.rootfs_mounted,
        init: (&c.init).into(),
        execs: c.execs.iter().map(|(k, p)| (k.clone(), p.into())).collect(),
    };
    let tmp = dir.join(format!(".{id}.tmp"));
    let r = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&tmp, serde_json::to_vec(&rec).unwrap_or_default()))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = r {
        log::error!("record task {id} in {}: {e}", path.display());
    }
}

/// How long after re-adoption a recorded process that is gone (not even a zombie) may still have
/// its exit handed over by the keeper.
const LOST_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// After re-adoption: a recorded process that is gone and whose exit neither the keeper handed
/// over (within [`LOST_AFTER`]) nor the dead worker recorded was reaped by the dead worker in its
/// last instant: report it exited with 255, containerd's "unknown" exit status, rather than
/// leave its `Wait` hanging.
pub(super) fn settle_lost_exits(i: &super::Inner) {
    std::thread::sleep(LOST_AFTER);
    let lost: Vec<i32> = {
        let st = i.state.lock().unwrap_or_else(|e| e.into_inner());
        st.ctrs
            .values()
            .flat_map(|c| std::iter::once(&c.init).chain(c.execs.values()))
            .filter(|p| p.pid > 0 && p.exit.is_none())
            .map(|p| p.pid)
            .filter(|pid| {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), None)
                    == Err(nix::errno::Errno::ESRCH)
            })
            .collect()
    };
    for pid in lost {
        log::warn!("re-adopted process {pid} is gone and its exit was lost: reported as 255");
        i.on_exit(pid, 255);
    }
}

/// The containers recorded in `dir` (a restarted worker's tasks).
pub(super) fn load_all(dir: &Path) -> Vec<(String, Ctr)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        if id.starts_with('.') {
            let _ = std::fs::remove_file(e.path());
            continue;
        }
        let rec = match std::fs::read(e.path())
            .map_err(|e| e.to_string())
            .and_then(|d| serde_json::from_slice::<CtrRecord>(&d).map_err(|e| e.to_string()))
        {
            Ok(r) => r,
            Err(err) => {
                log::error!("read the record of task {id}: {err}");
                continue;
            }
        };
        out.push((
            id,
            Ctr {
                bundle: rec.bundle,
                init: rec.init.into(),
                execs: rec.execs.into_iter().map(|(k, p)| (k, p.into())).collect(),
                rootfs_mounted: rec.rootfs_mounted,
                ooms: 0,
                cgroup: None,
            },
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_a_container_and_its_execs() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Ctr {
            bundle: "/b".into(),
            init: Proc {
                pid: 42,
                started: true,
                stdout: "/fifo/out".into(),
                ..Default::default()
            },
            execs: HashMap::new(),
            rootfs_mounted: true,
            ooms: 3,
            cgroup: None,
        };
        c.execs.insert(
            "e1".into(),
            Proc {
                pid: 43,
                exit: Some((
                    7,
                    Timestamp {
                        seconds: 5,
                        nanos: 6,
                        ..Default::default()
                    },
                )),
                spec: Some("{}".into()),
                ..Default::default()
            },
        );
        let rec = CtrRecord {
            bundle: c.bundle.clone(),
            rootfs_mounted: c.rootfs_mounted,
            init: (&c.init).into(),
            execs: c.execs.iter().map(|(k, p)| (k.clone(), p.into())).collect(),
        };
        std::fs::write(dir.path().join("ctr"), serde_json::to_vec(&rec).unwrap()).unwrap();
        std::fs::write(dir.path().join(".ctr.tmp"), b"partial").unwrap();
        let all = load_all(dir.path());
        assert_eq!(all.len(), 1);
        let (id, back) = &all[0];
        assert_eq!(id, "ctr");
        assert_eq!((back.init.pid, back.init.started), (42, true));
        assert_eq!(back.init.stdout, "/fifo/out");
        assert!(back.rootfs_mounted);
        let e = &back.execs["e1"];
        assert_eq!(e.pid, 43);
        assert_eq!(e.exit.as_ref().map(|(c, t)| (*c, t.seconds)), Some((7, 5)));
        assert!(!dir.path().join(".ctr.tmp").exists());
    }
}
