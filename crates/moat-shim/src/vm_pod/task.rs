//! The Task verbs for a pod VM's containers, onto the agent: Create (the emulated sandbox, or a
//! container from the VM's share), Start, State, Wait, Kill, Delete, Exec, Pids, Pause, Resume,
//! Stats and Shutdown. `router` turns their errors into ttrpc statuses.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim::api::{self, Status};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskPaused, TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::topics;
use containerd_shim::protos::types::task::ProcessInfo;
use moat_agent_proto::{Reply, Request};

use super::error::{Result, VmPodError};
use super::{guest, now, stdio, VCtr, VProc, VmPod};

fn nf(what: impl Into<String>) -> VmPodError {
    VmPodError::NotFound(what.into())
}

impl VmPod {
    /// Create: boot the VM at the first one; the sandbox is emulated, any other container is
    /// created in the VM from the share.
    pub fn create(self: &Arc<Self>, req: &api::CreateTaskRequest) -> Result<u32> {
        if !req.checkpoint.is_empty() {
            return Err(VmPodError::Unsupported(
                "checkpoint/restore is not supported by moat".into(),
            ));
        }
        let bundle = Path::new(&req.bundle);
        let cfg_path = bundle.join("config.json");
        let data = std::fs::read(&cfg_path).map_err(VmPodError::io("read", &cfg_path))?;
        let spec: serde_json::Value =
            serde_json::from_slice(&data).map_err(|e| VmPodError::Spec {
                id: req.id.clone(),
                reason: e.to_string(),
            })?;
        let link = self.boot(&req.id, &spec)?.clone();
        let sandbox = guest::is_sandbox(&spec);
        let mut c = VCtr {
            bundle: req.bundle.clone(),
            sandbox,
            init: VProc {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                ..Default::default()
            },
            execs: Default::default(),
            rootfs_mounted: false,
            shared: vec![],
            paused: false,
        };
        if sandbox {
            // The guest's UTS, IPC and network namespaces are the pod's.
            if let Some(settings) = guest::pod_settings(&spec) {
                link.done(Request::Pod(settings))?;
            }
        } else {
            c.rootfs_mounted =
                crate::service::mount_rootfs(req).map_err(|reason| VmPodError::Spec {
                    id: req.id.clone(),
                    reason,
                })?;
            if let Err(e) = self.create_in_vm(&link, req, &mut c) {
                self.release(&req.id, &c);
                return Err(e);
            }
        }
        let pid = link.pid();
        self.table().ctrs.insert(req.id.clone(), c);
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                pid,
                ..Default::default()
            }),
        );
        Ok(pid)
    }

    fn create_in_vm(
        &self,
        link: &Arc<super::Link>,
        req: &api::CreateTaskRequest,
        c: &mut VCtr,
    ) -> Result<()> {
        let g = guest::prepare(&req.id, Path::new(&req.bundle))?;
        log::debug!(
            "container {}: shares the pod VM's {:?} namespaces",
            req.id,
            g.dropped_namespaces
        );
        let fifos = stdio::open(&req.id, &req.stdin, &req.stdout, &req.stderr)?;
        let virtiofsd = link
            .virtiofsd_pid()
            .ok_or_else(|| nf("the pod VM's virtiofsd"))?;
        c.shared = g.binds.iter().map(|b| b.target.clone()).collect();
        c.shared.push(PathBuf::from(&req.id));
        moat_vm::virtiofs::add_binds(virtiofsd, &g.binds).map_err(VmPodError::vm(format!(
            "share the rootfs and mounts of container {} with the pod VM",
            req.id
        )))?;
        // Output may follow the create at once: the process must be known before.
        {
            let mut t = self.table();
            let mut init = VProc {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                ..Default::default()
            };
            init.out = Some(fifos.out);
            init.err = Some(fifos.err);
            t.ctrs.insert(
                req.id.clone(),
                VCtr {
                    bundle: c.bundle.clone(),
                    sandbox: false,
                    init,
                    execs: Default::default(),
                    rootfs_mounted: c.rootfs_mounted,
                    shared: c.shared.clone(),
                    paused: false,
                },
            );
        }
        let created = link.pid_of(Request::CreateShared {
            container_id: req.id.clone(),
            config_json: g.config_json,
            rootfs: g.rootfs,
            stdin: fifos.stdin.is_some(),
            shared: g.mounts,
        });
        let mut t = self.table();
        let entry = t.ctrs.remove(&req.id);
        match created {
            Ok(pid) => {
                if let Some(e) = entry {
                    c.init = e.init;
                }
                c.init.guest_pid = pid;
                drop(t);
                if let Some(f) = fifos.stdin {
                    stdio::forward(link.clone(), req.id.clone(), None, f);
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Undo what a failed create did on the host.
    fn release(&self, id: &str, c: &VCtr) {
        if let (Some(l), false) = (self.link.get(), c.shared.is_empty()) {
            if let Some(v) = l.virtiofsd_pid() {
                if let Err(e) = moat_vm::virtiofs::remove_binds(v, &c.shared) {
                    log::warn!("container {id}: remove its binds from the pod VM's share: {e}");
                }
            }
        }
        if c.rootfs_mounted {
            let _ = nix::mount::umount2(
                &Path::new(&c.bundle).join("rootfs"),
                nix::mount::MntFlags::MNT_DETACH,
            );
        }
    }

    pub fn start(self: &Arc<Self>, id: &str, exec_id: &str) -> Result<u32> {
        let link = self.link()?.clone();
        if exec_id.is_empty() {
            let sandbox = {
                let t = self.table();
                t.ctrs.get(id).ok_or_else(|| nf(id))?.sandbox
            };
            if !sandbox {
                link.done(Request::Start {
                    container_id: id.into(),
                })?;
            }
            if let Some(c) = self.table().ctrs.get_mut(id) {
                c.init.started = true;
            }
            self.publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: id.into(),
                    pid: link.pid(),
                    ..Default::default()
                }),
            );
            return Ok(link.pid());
        }
        let (spec, stdin, stdout, stderr) = {
            let t = self.table();
            let c = t.ctrs.get(id).ok_or_else(|| nf(id))?;
            if c.sandbox {
                return Err(VmPodError::Unsupported(format!(
                    "exec in the sandbox {id} of a VM pod: it has no process (emulated)"
                )));
            }
            let e = c
                .execs
                .get(exec_id)
                .ok_or_else(|| nf(format!("exec {exec_id}")))?;
            (
                e.spec.clone().unwrap_or_default(),
                e.stdin.clone(),
                e.stdout.clone(),
                e.stderr.clone(),
            )
        };
        let fifos = stdio::open(exec_id, &stdin, &stdout, &stderr)?;
        if let Some(e) = self
            .table()
            .ctrs
            .get_mut(id)
            .and_then(|c| c.execs.get_mut(exec_id))
        {
            e.out = Some(fifos.out);
            e.err = Some(fifos.err);
        }
        let pid = link.pid_of(Request::Exec {
            container_id: id.into(),
            exec_id: exec_id.into(),
            process_json: spec,
            stdin: fifos.stdin.is_some(),
        });
        let pid = match pid {
            Ok(p) => p,
            Err(e) => {
                if let Some(x) = self
                    .table()
                    .ctrs
                    .get_mut(id)
                    .and_then(|c| c.execs.get_mut(exec_id))
                {
                    x.out = None;
                    x.err = None;
                }
                return Err(e);
            }
        };
        if let Some(e) = self
            .table()
            .ctrs
            .get_mut(id)
            .and_then(|c| c.execs.get_mut(exec_id))
        {
            e.guest_pid = pid;
            e.started = true;
        }
        if let Some(f) = fifos.stdin {
            stdio::forward(link.clone(), id.into(), Some(exec_id.into()), f);
        }
        self.publish(
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            Box::new(TaskExecStarted {
                container_id: id.into(),
                exec_id: exec_id.into(),
                pid: link.pid(),
                ..Default::default()
            }),
        );
        Ok(link.pid())
    }

    pub fn state(&self, id: &str, exec_id: &str) -> Result<api::StateResponse> {
        let pid = self.link.get().map_or(0, |l| l.pid());
        let t = self.table();
        let c = t.ctrs.get(id).ok_or_else(|| nf(id))?;
        let p = if exec_id.is_empty() {
            &c.init
        } else {
            c.execs.get(exec_id).ok_or_else(|| nf(exec_id))?
        };
        let status = if p.exit.is_some() {
            Status::STOPPED
        } else if exec_id.is_empty() && c.paused {
            Status::PAUSED
        } else if p.started {
            Status::RUNNING
        } else {
            Status::CREATED
        };
        Ok(api::StateResponse {
            id: id.into(),
            exec_id: exec_id.into(),
            bundle: c.bundle.clone(),
            pid,
            status: status.into(),
            stdin: p.stdin.clone(),
            stdout: p.stdout.clone(),
            stderr: p.stderr.clone(),
            exit_status: p.exit.as_ref().map(|e| e.0).unwrap_or(0),
            exited_at: p.exit.as_ref().map(|e| e.1.clone()).into(),
            ..Default::default()
        })
    }

    pub fn wait(&self, id: &str, exec_id: &str) -> Result<(u32, Timestamp)> {
        let mut t = self.table();
        loop {
            let c = t.ctrs.get(id).ok_or_else(|| nf(id))?;
            let p = if exec_id.is_empty() {
                &c.init
            } else {
                c.execs.get(exec_id).ok_or_else(|| nf(exec_id))?
            };
            if let Some(e) = &p.exit {
                return Ok(e.clone());
            }
            t = self.cond.wait(t).unwrap_or_else(|e| e.into_inner());
        }
    }

    pub fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let (sandbox, exited) = {
            let t = self.table();
            let c = t.ctrs.get(id).ok_or_else(|| nf(id))?;
            let p = if exec_id.is_empty() {
                &c.init
            } else {
                c.execs.get(exec_id).ok_or_else(|| nf(exec_id))?
            };
            (c.sandbox, p.exit.is_some())
        };
        if exited || signal == 0 {
            return Ok(());
        }
        if sandbox {
            // The emulated pause process ends as a killed one would.
            self.exited(id, None, 128 + signal as i32);
            return Ok(());
        }
        let r = self.link()?.done(Request::Kill {
            container_id: id.into(),
            exec_id: (!exec_id.is_empty()).then(|| exec_id.to_string()),
            signal: signal as i32,
            all,
        });
        match r {
            // It may have exited meanwhile: not an error for containerd.
            Err(VmPodError::Agent { .. }) if self.has_exited(id, exec_id) => Ok(()),
            r => r,
        }
    }

    fn has_exited(&self, id: &str, exec_id: &str) -> bool {
        let t = self.table();
        t.ctrs.get(id).is_some_and(|c| {
            if exec_id.is_empty() {
                c.init.exit.is_some()
            } else {
                c.execs.get(exec_id).is_none_or(|e| e.exit.is_some())
            }
        })
    }

    pub fn delete(&self, id: &str, exec_id: &str) -> Result<api::DeleteResponse> {
        let pid = self.link.get().map_or(0, |l| l.pid());
        if !exec_id.is_empty() {
            let p = {
                let mut t = self.table();
                let c = t.ctrs.get_mut(id).ok_or_else(|| nf(id))?;
                c.execs.remove(exec_id).ok_or_else(|| nf(exec_id))?
            };
            let (code, at) = p.exit.unwrap_or((0, now()));
            return Ok(api::DeleteResponse {
                pid,
                exit_status: code,
                exited_at: Some(at).into(),
                ..Default::default()
            });
        }
        let c = self.table().ctrs.remove(id).ok_or_else(|| nf(id))?;
        if c.sandbox {
            // The pod is gone: so is its VM.
            self.power_off();
        } else if let Ok(link) = self.link() {
            let r = link.done(Request::Delete {
                container_id: id.into(),
                force: true,
            });
            if let Err(e) = r {
                log::warn!("delete container {id} in the pod VM: {e}");
            }
        }
        self.release(id, &c);
        let (code, at) = c.init.exit.clone().unwrap_or((137, now()));
        self.cond.notify_all();
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: id.into(),
                id: id.into(),
                pid,
                exit_status: code,
                exited_at: Some(at.clone()).into(),
                ..Default::default()
            }),
        );
        Ok(api::DeleteResponse {
            pid,
            exit_status: code,
            exited_at: Some(at).into(),
            ..Default::default()
        })
    }

    pub fn exec(&self, req: &api::ExecProcessRequest) -> Result<()> {
        let spec = req
            .spec
            .as_ref()
            .map(|a| String::from_utf8_lossy(&a.value).into_owned())
            .ok_or_else(|| VmPodError::Spec {
                id: req.id.clone(),
                reason: format!("exec {} without a process spec", req.exec_id),
            })?;
        {
            let mut t = self.table();
            let c = t.ctrs.get_mut(&req.id).ok_or_else(|| nf(&req.id))?;
            if c.execs.contains_key(&req.exec_id) {
                return Err(VmPodError::Unsupported(format!(
                    "exec {} already exists in {}",
                    req.exec_id, req.id
                )));
            }
            c.execs.insert(
                req.exec_id.clone(),
                VProc {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    spec: Some(spec),
                    ..Default::default()
                },
            );
        }
        self.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }),
        );
        Ok(())
    }

    /// ResizePty: the size of the process's terminal in the guest (`Resize`, a `TIOCSWINSZ` on
    /// its pty master there). Before the process runs, or after it exited, there is nothing to
    /// resize (as for a namespaces container whose console is not there yet).
    pub fn resize(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()> {
        let running = {
            let t = self.table();
            let c = t.ctrs.get(id).ok_or_else(|| nf(id))?;
            let p = if exec_id.is_empty() {
                &c.init
            } else {
                c.execs.get(exec_id).ok_or_else(|| nf(exec_id))?
            };
            !c.sandbox && p.guest_pid > 0 && p.exit.is_none()
        };
        if !running {
            return Ok(());
        }
        let r = self.link()?.done(Request::Resize {
            container_id: id.into(),
            exec_id: (!exec_id.is_empty()).then(|| exec_id.to_string()),
            width: width.min(u16::MAX as u32) as u16,
            height: height.min(u16::MAX as u32) as u16,
        });
        match r {
            // It may have exited meanwhile, or have no terminal: not an error for containerd.
            Err(VmPodError::Agent { .. }) => Ok(()),
            r => r,
        }
    }

    fn is_sandbox(&self, id: &str) -> Result<bool> {
        Ok(self.table().ctrs.get(id).ok_or_else(|| nf(id))?.sandbox)
    }

    /// The container's processes, by guest pid.
    pub fn pids(&self, id: &str) -> Result<Vec<ProcessInfo>> {
        if self.is_sandbox(id)? {
            return Ok(vec![]);
        }
        match self.link()?.request(Request::Processes {
            container_id: id.into(),
        })? {
            Reply::Processes(ps) => Ok(ps
                .into_iter()
                .map(|p| ProcessInfo {
                    pid: p.pid.max(0) as u32,
                    ..Default::default()
                })
                .collect()),
            other => Err(VmPodError::UnexpectedReply {
                request: format!("processes of {id}"),
                reply: format!("{other:?}"),
            }),
        }
    }

    pub fn pause(&self, id: &str, pause: bool) -> Result<()> {
        if !self.is_sandbox(id)? {
            let link = self.link()?;
            link.done(if pause {
                Request::Pause {
                    container_id: id.into(),
                }
            } else {
                Request::Resume {
                    container_id: id.into(),
                }
            })?;
        }
        if let Some(c) = self.table().ctrs.get_mut(id) {
            c.paused = pause;
        }
        if pause {
            self.publish(
                topics::TASK_PAUSED_EVENT_TOPIC,
                Box::new(TaskPaused {
                    container_id: id.into(),
                    ..Default::default()
                }),
            );
        } else {
            self.publish(
                topics::TASK_RESUMED_EVENT_TOPIC,
                Box::new(TaskResumed {
                    container_id: id.into(),
                    ..Default::default()
                }),
            );
        }
        Ok(())
    }

    /// The container's cgroup usage in the guest, as containerd's cgroups v1 metrics.
    pub fn stats(&self, id: &str) -> Result<moat_cgroups::Stats> {
        let mut s = moat_cgroups::Stats::default();
        if self.is_sandbox(id)? {
            return Ok(s);
        }
        let g = match self.link()?.request(Request::Stats {
            container_id: id.into(),
        })? {
            Reply::Stats(g) => g,
            other => {
                return Err(VmPodError::UnexpectedReply {
                    request: format!("stats of {id}"),
                    reply: format!("{other:?}"),
                })
            }
        };
        s.cpu.usage.total = g.cpu_usage_ns;
        s.memory.usage.usage = g.memory_usage_bytes;
        s.memory.usage.max = g.memory_max_usage_bytes;
        s.memory.usage.limit = g.memory_limit_bytes;
        s.pids.current = g.pids_current;
        s.pids.limit = g.pids_limit;
        Ok(s)
    }

    /// The pid containerd sees for container `id` (QEMU's).
    pub fn task_pid(&self, id: &str) -> u32 {
        if self.has(id) {
            self.link.get().map_or(0, |l| l.pid())
        } else {
            0
        }
    }

    /// Shutdown: with no container left, power the VM off; true when the shim may exit.
    pub fn shutdown(&self) -> bool {
        if self.is_empty() {
            self.power_off();
            true
        } else {
            false
        }
    }
}
