//! The Task service: containerd's requests mapped onto the runtime core. One service per shim
//! process, holding every container of the pod (and their exec'd processes).
//!
//! Exits: the shim is a child subreaper, containerd-shim's reaper thread waits for every child and
//! notifies the exit monitor; a thread of ours turns those into `TaskExit` events and wakes `Wait`.
//!
//! In the shared shim's worker (see `keeper`) each container is also recorded on disk (`record`),
//! and a restarted worker starts with the recorded containers (re-adoption); the exits of their
//! processes, now the keeper's children, come from the keeper (`serve`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use containerd_shim::api::{self, Status};
use containerd_shim::monitor::{monitor_subscribe, Subject, Topic};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::topics;
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{
    Config, DeleteResponse, ExitSignal, Flags, StartOpts, TtrpcContext, TtrpcResult,
};
use moat_container::Store;

mod oom;
mod record;
mod spawn;

use crate::io::Console;
use crate::zygote::Request;

fn err(msg: impl Into<String>) -> containerd_shim::protos::ttrpc::Error {
    containerd_shim::protos::ttrpc::Error::RpcStatus(containerd_shim::protos::ttrpc::get_status(
        containerd_shim::protos::ttrpc::Code::UNKNOWN,
        msg.into(),
    ))
}

fn not_found(what: &str) -> containerd_shim::protos::ttrpc::Error {
    containerd_shim::protos::ttrpc::Error::RpcStatus(containerd_shim::protos::ttrpc::get_status(
        containerd_shim::protos::ttrpc::Code::NOT_FOUND,
        format!("{what} not found"),
    ))
}

fn now() -> Timestamp {
    containerd_shim::util::timestamp().unwrap_or_default()
}

/// One process the shim tracks: a container's init or an exec'd process.
#[derive(Default)]
struct Proc {
    pid: i32,
    started: bool,
    exit: Option<(u32, Timestamp)>,
    stdin: String,
    stdout: String,
    stderr: String,
    terminal: bool,
    console: Option<Console>,
    /// For an exec: its process spec (JSON), run at Start.
    spec: Option<String>,
}

struct Ctr {
    bundle: String,
    init: Proc,
    execs: HashMap<String, Proc>,
    rootfs_mounted: bool,
    ooms: u64,
    /// Its cgroup, read from its state file once (`Inner::cgroup_of`); not recorded.
    cgroup: Option<moat_cgroups::Cgroup>,
}

#[derive(Default)]
struct State {
    ctrs: HashMap<String, Ctr>,
    /// Exits of pids not (yet) known: a process may exit before create returns its pid. With
    /// the time seen: one not claimed soon is dropped (its pid may be reused by a later process,
    /// and a long-lived shared shim must not grow it forever).
    early: HashMap<i32, (i32, std::time::Instant)>,
}

pub struct Inner {
    state: Mutex<State>,
    cond: Condvar,
    store: Store,
    /// Reconnects when a publish fails (containerd restarted; the shim, shared or not, lives on).
    events: crate::events::Events,
    exit: Arc<ExitSignal>,
    /// Wakes the OOM watcher ([`oom::watch`]) when containers start or exit.
    oom_wake: oom::OomWake,
    /// Held while an OOM kill is counted and published ([`Inner::report_oom`]).
    oom_report: Mutex<()>,
}

#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

/// How long a container whose Create a dead worker was running is waited for (`delete`).
const HALF_CREATED_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// How long the exit of a pid not known yet is kept for the Create or Start that returns it.
const EARLY_EXIT_KEPT: std::time::Duration = std::time::Duration::from_secs(30);

fn store_root(namespace: &str) -> PathBuf {
    PathBuf::from("/run/moat-shim").join(namespace)
}

impl Inner {
    fn new(store: Store, events: crate::events::Events, exit: Arc<ExitSignal>) -> Inner {
        Inner {
            state: Mutex::default(),
            cond: Condvar::new(),
            store,
            events,
            exit,
            oom_wake: oom::OomWake::new().expect("a pipe for the OOM watcher"),
            oom_report: Mutex::new(()),
        }
    }

    fn publish(&self, topic: &str, ev: Box<dyn MessageDyn>) {
        self.events.publish(topic, ev);
    }

    fn on_exit(&self, pid: i32, code: i32) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut found = None;
        for (id, c) in st.ctrs.iter_mut() {
            if c.init.pid == pid && c.init.exit.is_none() {
                c.init.exit = Some((code as u32, now()));
                found = Some((id.clone(), id.clone()));
            }
            for (eid, p) in c.execs.iter_mut() {
                if p.pid == pid && p.exit.is_none() {
                    p.exit = Some((code as u32, now()));
                    found = Some((id.clone(), eid.clone()));
                }
            }
        }
        match found {
            Some((cid, id)) => {
                record::save(&cid, st.ctrs.get(&cid));
                drop(st);
                self.oom_before_exit(&cid);
                self.cond.notify_all();
                self.publish(
                    topics::TASK_EXIT_EVENT_TOPIC,
                    Box::new(TaskExit {
                        container_id: cid,
                        id,
                        pid: pid as u32,
                        exit_status: code as u32,
                        exited_at: Some(now()).into(),
                        ..Default::default()
                    }),
                );
            }
            None => {
                st.early.retain(|_, (_, at)| at.elapsed() < EARLY_EXIT_KEPT);
                st.early.insert(pid, (code, std::time::Instant::now()));
            }
        }
    }

    /// Exit if the shim serves no container and may exit (`shared::may_exit`, decided under the
    /// state lock: a Create inserts its container before it releases its pending task): `None`
    /// when it serves containers, else whether it is exiting.
    fn try_exit(&self) -> Option<bool> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !st.ctrs.is_empty() {
            return None;
        }
        let exit = crate::shared::may_exit();
        if exit {
            self.exit.signal();
        }
        Some(exit)
    }

    /// Record `pid` as started; if it already exited, take that exit now.
    fn claim_early_exit(&self, st: &mut State, pid: i32) -> Option<i32> {
        st.early
            .remove(&pid)
            .filter(|(_, at)| at.elapsed() < EARLY_EXIT_KEPT)
            .map(|(code, _)| code)
    }
}

impl containerd_shim::Shim for Service {
    type T = Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Service {
            inner: Arc::new(Inner::new(
                Store::new(store_root(&args.namespace)),
                crate::events::Events::new(None, &args.namespace),
                Arc::new(ExitSignal::default()),
            )),
        }
    }

    /// Not used: `main` answers `start` itself (see `bootstrap`).
    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        crate::bootstrap::start(&[
            String::new(),
            "-namespace".into(),
            opts.namespace,
            "-id".into(),
            opts.id,
            "-address".into(),
            opts.address,
            "start".into(),
        ])
        .map_err(containerd_shim::Error::Other)
    }

    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        // Called after the shim died: free whatever the container still holds.
        let id = std::env::current_dir()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default();
        let _ = moat_container::delete::delete(&self.inner.store, &id, true);
        if let Ok(cwd) = std::env::current_dir() {
            let _ = nix::mount::umount2(&cwd.join("rootfs"), nix::mount::MntFlags::MNT_DETACH);
        }
        // A VM pod's shim that died left its VM's run directory (the VM powers itself off).
        crate::vm_pod::collect_stale_run_dirs();
        Ok(DeleteResponse {
            exit_status: 137,
            exited_at: Some(now()).into(),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.inner.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        // A kept publisher would poll every 10 ms (crate::events): connect per event instead.
        drop(publisher);
        self.task_service(std::env::var("TTRPC_ADDRESS").unwrap_or_default())
    }
}

impl Service {
    /// The task service, publishing its events to containerd at `events_address`.
    pub fn task_service(&self, events_address: String) -> Service {
        let inner = Arc::new(Inner::new(
            self.inner.store.clone(),
            crate::events::Events::new(Some(events_address), self.inner.events.namespace()),
            self.inner.exit.clone(),
        ));
        if let Some(dir) = crate::shared::tasks_dir() {
            let adopted = record::load_all(&dir);
            if !adopted.is_empty() {
                log::info!(
                    "re-adopted {} tasks: {:?}",
                    adopted.len(),
                    adopted.iter().map(|(id, _)| id).collect::<Vec<_>>()
                );
            }
            let mut st = inner.state.lock().unwrap_or_else(|e| e.into_inner());
            let adopted_any = !adopted.is_empty();
            st.ctrs.extend(adopted);
            drop(st);
            if adopted_any {
                let i = inner.clone();
                std::thread::spawn(move || record::settle_lost_exits(&i));
            }
        }
        let sub = monitor_subscribe(Topic::All).expect("subscribe to the exit monitor");
        let i = inner.clone();
        std::thread::spawn(move || {
            while let Ok(ev) = sub.rx.recv() {
                if let Subject::Pid(pid) = ev.subject {
                    i.on_exit(pid, ev.exit_code);
                }
            }
        });
        let i = inner.clone();
        std::thread::spawn(move || oom::watch(i));
        Service { inner }
    }
}

pub(crate) fn mount_rootfs(req: &api::CreateTaskRequest) -> Result<bool, String> {
    if req.rootfs.is_empty() {
        return Ok(false);
    }
    let target = Path::new(&req.bundle).join("rootfs");
    std::fs::create_dir_all(&target).map_err(|e| format!("create {}: {e}", target.display()))?;
    for m in &req.rootfs {
        containerd_shim::mount::mount_rootfs(
            Some(m.type_.as_str()),
            Some(m.source.as_str()),
            &m.options,
            &target,
        )
        .map_err(|e| {
            format!(
                "mount rootfs {} ({}) on {}: {e}",
                m.source,
                m.type_,
                target.display()
            )
        })?;
    }
    Ok(true)
}

impl Service {
    /// The shared shim's worker died during the Create of `id` (answered `UNAVAILABLE` by the
    /// keeper; containerd then deletes the task, which the new worker does not know): the
    /// zygote's fork may be creating the container all the same. In the background, wait for
    /// that create to finish (or fail, or never show) and remove what it made, as the Create's
    /// failure would have; the task stays pending meanwhile (the shim does not exit).
    fn remove_half_created(&self, id: &str) {
        if !crate::shared::left_pending_by_a_dead_worker(id) {
            return;
        }
        let (store, id) = (self.inner.store.clone(), id.to_owned());
        std::thread::spawn(move || {
            let _pending = crate::shared::Pending(&id);
            let deadline = std::time::Instant::now() + HALF_CREATED_WAIT;
            let mut seen = false;
            loop {
                match store.load(&id) {
                    Ok(sf) if sf.create_done || std::time::Instant::now() > deadline => break,
                    Ok(_) => seen = true,
                    // Undone by the create's failure, or never started.
                    Err(_) if seen || std::time::Instant::now() > deadline => return,
                    Err(_) => {}
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            log::warn!("delete {id}: created by a worker that died during its Create; removed");
            if let Err(e) = moat_container::delete::delete(&store, &id, true) {
                log::error!("delete the half-created container {id}: {e}");
            }
        });
    }

    /// Signalled when the shim should exit (Shutdown with no container left).
    pub fn exit_signal(&self) -> Arc<ExitSignal> {
        self.inner.exit.clone()
    }
}

impl containerd_shim::Task for Service {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        // Released once the container is in the state (or the Create failed).
        let _pending = crate::shared::Pending(&req.id);
        if !req.checkpoint.is_empty() {
            return Err(err("checkpoint/restore is not supported by moat"));
        }
        let mounted = mount_rootfs(&req).map_err(err)?;
        let mut init = Proc {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
            ..Default::default()
        };
        let create = Request::Create {
            root: self.inner.store.root.clone(),
            id: req.id.clone(),
            bundle: PathBuf::from(&req.bundle),
            console_socket: None,
        };
        let pid = match self.spawn_proc(&req.id, create, &mut init) {
            Ok(pid) => pid,
            Err(e) => {
                if mounted {
                    let _ = nix::mount::umount2(
                        &Path::new(&req.bundle).join("rootfs"),
                        nix::mount::MntFlags::MNT_DETACH,
                    );
                }
                return Err(err(e));
            }
        };
        init.pid = pid;
        let mut st = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(code) = self.inner.claim_early_exit(&mut st, pid) {
            init.exit = Some((code as u32, now()));
        }
        st.ctrs.insert(
            req.id.clone(),
            Ctr {
                bundle: req.bundle.clone(),
                init,
                execs: HashMap::new(),
                rootfs_mounted: mounted,
                ooms: 0,
                cgroup: None,
            },
        );
        record::save(&req.id, st.ctrs.get(&req.id));
        drop(st);
        self.inner.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                pid: pid as u32,
                ..Default::default()
            }),
        );
        Ok(api::CreateTaskResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        if req.exec_id.is_empty() {
            moat_container::start::start(&self.inner.store, &req.id)
                .map_err(|e| err(format!("start container {}: {e}", req.id)))?;
            let pid = {
                let mut st = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
                let c = st.ctrs.get_mut(&req.id).ok_or_else(|| not_found(&req.id))?;
                c.init.started = true;
                let pid = c.init.pid;
                record::save(&req.id, Some(c));
                pid
            };
            self.inner.oom_wake.wake();
            self.inner.publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: req.id.clone(),
                    pid: pid as u32,
                    ..Default::default()
                }),
            );
            return Ok(api::StartResponse {
                pid: pid as u32,
                ..Default::default()
            });
        }
        // An exec: run the process registered by Exec. The entry stays in place (a concurrent
        // Wait must find it); the spawn works on a copy of what it needs.
        let mut p = {
            let st = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
            let c = st.ctrs.get(&req.id).ok_or_else(|| not_found(&req.id))?;
            let e = c
                .execs
                .get(&req.exec_id)
                .ok_or_else(|| not_found(&format!("exec {}", req.exec_id)))?;
            Proc {
                stdin: e.stdin.clone(),
                stdout: e.stdout.clone(),
                stderr: e.stderr.clone(),
                terminal: e.terminal,
                spec: e.spec.clone(),
                ..Default::default()
            }
        };
        let exec = Request::Exec {
            root: self.inner.store.root.clone(),
            id: req.id.clone(),
            process: p.spec.clone().unwrap_or_default(),
            console_socket: None,
        };
        let pid = self.spawn_proc(&req.id, exec, &mut p).map_err(err)?;
        let mut st = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        let early = self.inner.claim_early_exit(&mut st, pid);
        if let Some(e) = st
            .ctrs
            .get_mut(&req.id)
            .and_then(|c| c.execs.get_mut(&req.exec_id))
        {
            e.pid = pid;
            e.started = true;
            e.console = p.console.take();
            if let Some(code) = early {
                e.exit = Some((code as u32, now()));
            }
        }
        record::save(&req.id, st.ctrs.get(&req.id));
        drop(st);
        if early.is_some() {
            self.inner.cond.notify_all();
        }
        self.inner.publish(
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            Box::new(TaskExecStarted {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                pid: pid as u32,
                ..Default::default()
            }),
        );
        Ok(api::StartResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let st = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        let c = st.ctrs.get(&req.id).ok_or_else(|| not_found(&req.id))?;
        let p = if req.exec_id.is_empty() {
            &c.init
        } else {
            c.execs
                .get(&req.exec_id)
                .ok_or_else(|| not_found(&req.exec_id))?
        };
        let status = if p.exit.is_some() {
            Status::STOPPED
        } else if req.exec_id.is_empty() {
            match self
                .inner
                .store
                .load(&req.id)
                .map(|s| self.inner.store.status(&s))
            {
                Ok(moat_container::Status::Paused) => Status::PAUSED,
                Ok(moat_container::Status::Created) => Status::CREATED,
                Ok(moat_container::Status::Running) => Status::RUNNING,
                _ => Status::STOPPED,
            }
        } else if p.started {
            Status::RUNNING
        } else {
            Status::CREATED
        };
        Ok(api::StateResponse {
            id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            bundle: c.bundle.clone(),
            pid: p.pid.max(0) as u32,
            status: status.into(),
            stdin: p.stdin.clone(),
            stdout: p.stdout.clone(),
            stderr: p.stderr.clone(),
            terminal: p.terminal,
            exit_status: p.exit.as_ref().map(|e| e.0).unwrap_or(0),
            exited_at: p.exit.as_ref().map(|e| e.1.clone()).into(),
            ..Default::default()
        })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        if req.exec_id.is_empty() {
            match moat_container::kill::kill(&self.inner.store, &req.id, req.signal as i32, req.all)
            {
                Ok(()) => {}
                // Killing a process that already exited is not an error for containerd.
                Err(moat_container::ContainerError::BadStatus { .. }) => {}
                Err(e) => return Err(err(format!("kill container {}: {e}", req.id))),
            }
            return Ok(api::Empty::new());
        }
        let st = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        let c = st.ctrs.get(&req.id).ok_or_else(|| not_found(&req.id))?;
        let p = c
            .execs
            .get(&req.exec_id)
            .ok_or_else(|| not_found(&req.exec_id))?;
        if p.pid > 0 && p.exit.is_none() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p.pid),
                nix::sys::signal::Signal::try_from(req.signal as i32).ok(),
            );
        }
        Ok(api::Empty::new())
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let mut st = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        if !req.exec_id.is_empty() {
            let c = st.ctrs.get_mut(&req.id).ok_or_else(|| not_found(&req.id))?;
            let p = c
                .execs
                .remove(&req.exec_id)
                .ok_or_else(|| not_found(&req.exec_id))?;
            record::save(&req.id, Some(c));
            let (code, at) = p.exit.unwrap_or((0, now()));
            return Ok(api::DeleteResponse {
                pid: p.pid.max(0) as u32,
                exit_status: code,
                exited_at: Some(at).into(),
                ..Default::default()
            });
        }
        let Some(c) = st.ctrs.remove(&req.id) else {
            drop(st);
            self.remove_half_created(&req.id);
            return Err(not_found(&req.id));
        };
        record::save(&req.id, None);
        drop(st);
        moat_container::delete::delete(&self.inner.store, &req.id, true)
            .map_err(|e| err(format!("delete container {}: {e}", req.id)))?;
        if c.rootfs_mounted {
            let _ = nix::mount::umount2(
                &Path::new(&c.bundle).join("rootfs"),
                nix::mount::MntFlags::MNT_DETACH,
            );
        }
        let (code, at) = c.init.exit.clone().unwrap_or((137, now()));
        self.inner.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: req.id.clone(),
                id: req.id.clone(),
                pid: c.init.pid as u32,
                exit_status: code,
                exited_at: Some(at.clone()).into(),
                ..Default::default()
            }),
        );
        Ok(api::DeleteResponse {
            pid: c.init.pid as u32,
            exit_status: code,
            exited_at: Some(at).into(),
            ..Default::default()
        })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let sf = self
            .inner
            .store
            .load(&req.id)
            .map_err(|e| err(e.to_string()))?;
        let pids = sf
            .cgroup
            .map(|c| c.pids())
            .transpose()
            .map_err(|e| err(e.to_string()))?
            .unwrap_or_default();
        Ok(api::PidsResponse {
            processes: pids
                .into_iter()
                .map(|p| ProcessInfo {
                    pid: p as u32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        moat_container::pause::pause(&self.inner.store, &req.id)
            .map_err(|e| err(format!("pause {}: {e}", req.id)))?;
        self.inner.publish(
            topics::TASK_PAUSED_EVENT_TOPIC,
            Box::new(containerd_shim::protos::events::task::TaskPaused {
                container_id: req.id.clone(),
                ..Default::default()
            }),
        );
        Ok(api::Empty::new())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        moat_container::pause::resume(&self.inner.store, &req.id)
            .map_err(|e| err(format!("resume {}: {e}", req.id)))?;
        self.inner.publish(
            topics::TASK_RESUMED_EVENT_TOPIC,
            Box::new(containerd_shim::protos::events::task::TaskResumed {
                container_id: req.id.clone(),
                ..Default::default()
            }),
        );
        Ok(api::Empty::new())
    }

    fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(containerd_shim::protos::ttrpc::Error::RpcStatus(
            containerd_shim::protos::ttrpc::get_status(
                containerd_shim::protos::ttrpc::Code::UNIMPLEMENTED,
                "checkpoint is not supported by moat",
            ),
        ))
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        let spec = req
            .spec
            .as_ref()
            .map(|a| String::from_utf8_lossy(&a.value).into_owned())
            .ok_or_else(|| err("exec without a process spec"))?;
        let mut st = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        let c = st.ctrs.get_mut(&req.id).ok_or_else(|| not_found(&req.id))?;
        if c.execs.contains_key(&req.exec_id) {
            return Err(err(format!("exec {} already exists", req.exec_id)));
        }
        c.execs.insert(
            req.exec_id.clone(),
            Proc {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                spec: Some(spec),
                ..Default::default()
            },
        );
        record::save(&req.id, Some(c));
        drop(st);
        self.inner.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }),
        );
        Ok(api::Empty::new())
    }

    fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let st = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        let c = st.ctrs.get(&req.id).ok_or_else(|| not_found(&req.id))?;
        let p = if req.exec_id.is_empty() {
            &c.init
        } else {
            c.execs
                .get(&req.exec_id)
                .ok_or_else(|| not_found(&req.exec_id))?
        };
        if let Some(con) = &p.console {
            con.resize(req.width, req.height)
                .map_err(|e| err(format!("resize pty: {e}")))?;
        }
        Ok(api::Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, _req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        // Without a terminal the container holds the stdin fifo itself and sees EOF when the
        // writer closes it; nothing is held open here.
        Ok(api::Empty::new())
    }

    fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        let data = req
            .resources
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        let res: oci_spec::runtime::LinuxResources = serde_json::from_slice(&data)
            .map_err(|e| err(format!("update {}: resources: {e}", req.id)))?;
        moat_container::pause::update(&self.inner.store, &req.id, &res)
            .map_err(|e| err(format!("update {}: {e}", req.id)))?;
        Ok(api::Empty::new())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let mut st = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let c = st.ctrs.get(&req.id).ok_or_else(|| not_found(&req.id))?;
            let p = if req.exec_id.is_empty() {
                &c.init
            } else {
                c.execs
                    .get(&req.exec_id)
                    .ok_or_else(|| not_found(&req.exec_id))?
            };
            if let Some((code, at)) = &p.exit {
                return Ok(api::WaitResponse {
                    exit_status: *code,
                    exited_at: Some(at.clone()).into(),
                    ..Default::default()
                });
            }
            st = self.inner.cond.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let sf = self
            .inner
            .store
            .load(&req.id)
            .map_err(|e| err(e.to_string()))?;
        let cg = sf
            .cgroup
            .ok_or_else(|| err(format!("container {} has no cgroup", req.id)))?;
        let stats = cg
            .stats()
            .map_err(|e| err(format!("stats of {}: {e}", req.id)))?;
        Ok(api::StatsResponse {
            stats: Some(crate::metrics::to_any(&crate::metrics::to_metrics(&stats))).into(),
            ..Default::default()
        })
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let st = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        let pid = st.ctrs.get(&req.id).map(|c| c.init.pid).unwrap_or(0);
        Ok(api::ConnectResponse {
            // The shared shim's keeper is the process containerd's connection ends in.
            shim_pid: crate::keeper::keeper_pid()
                .map(|p| p as u32)
                .unwrap_or_else(std::process::id),
            task_pid: pid.max(0) as u32,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        // The shared shim serves other pods' tasks too, and may have been promised new ones: if
        // so, it looks again later (a promised task whose Create never comes must not keep it).
        if self.inner.try_exit() == Some(false) {
            let inner = self.inner.clone();
            crate::shared::exit_when_idle(move || inner.try_exit());
        }
        Ok(api::Empty::new())
    }
}
