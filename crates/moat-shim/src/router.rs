//! The Task service containerd talks to: each request goes to the namespaces backend
//! (`service`) or, for a pod that runs in a VM, to `vm_pod`. The choice is made once, at the
//! pod's first Create (the sandbox's): VM mode when the shim runs as
//! `containerd-shim-moat-vm-v2` or the sandbox's spec carries `io.moat.isolation=vm`.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use containerd_shim::api;
use containerd_shim::protos::ttrpc::{get_status, Code, Error};
use containerd_shim::{ExitSignal, Task, TtrpcContext, TtrpcResult};

use crate::service::Service;
use crate::vm_pod::{self, VmPod, VmPodError};

pub struct Router {
    ns: Service,
    vm: OnceLock<Arc<VmPod>>,
    /// containerd's ttrpc address, for the VM pod's events.
    events_address: String,
    namespace: String,
    exit: Arc<ExitSignal>,
}

fn status(e: VmPodError) -> Error {
    let code = match e {
        VmPodError::NotFound(_) => Code::NOT_FOUND,
        VmPodError::Unsupported(_) => Code::UNIMPLEMENTED,
        _ => Code::UNKNOWN,
    };
    Error::RpcStatus(get_status(code, e.to_string()))
}

impl Router {
    pub fn new(ns: Service, events_address: String, namespace: &str) -> Router {
        let exit = ns.exit_signal();
        Router {
            ns,
            vm: OnceLock::new(),
            events_address,
            namespace: namespace.to_string(),
            exit,
        }
    }

    /// The VM pod, when this shim serves one.
    fn vm(&self) -> Option<&Arc<VmPod>> {
        self.vm.get()
    }

    /// The VM pod for a Create: the existing one, or a new one when the pod asks for a VM (the
    /// bundle is read once for both the routing and the shared shim's refusal).
    fn vm_for_create(
        &self,
        req: &api::CreateTaskRequest,
    ) -> std::result::Result<Option<&Arc<VmPod>>, VmPodError> {
        if self.vm.get().is_none()
            && (vm_pod::forced() || vm_pod::guest::wants_vm(Path::new(&req.bundle)))
        {
            // `start` gives a VM pod a shim of its own: the shared shim never holds a VM.
            if crate::shared::serving() {
                return Err(VmPodError::Unsupported(format!(
                    "create {}: a VM pod is not served by the shared shim",
                    req.id
                )));
            }
            let _ = self.vm.set(VmPod::new(
                Some(self.events_address.clone()),
                &self.namespace,
            ));
        }
        Ok(self.vm.get())
    }
}

impl Task for Router {
    fn create(
        &self,
        ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        match self.vm_for_create(&req).map_err(status)? {
            Some(vm) => Ok(api::CreateTaskResponse {
                pid: vm.create(&req).map_err(status)?,
                ..Default::default()
            }),
            None => self.ns.create(ctx, req),
        }
    }

    fn start(&self, ctx: &TtrpcContext, req: api::StartRequest) -> TtrpcResult<api::StartResponse> {
        match self.vm() {
            Some(vm) => Ok(api::StartResponse {
                pid: vm.start(&req.id, &req.exec_id).map_err(status)?,
                ..Default::default()
            }),
            None => self.ns.start(ctx, req),
        }
    }

    fn state(&self, ctx: &TtrpcContext, req: api::StateRequest) -> TtrpcResult<api::StateResponse> {
        match self.vm() {
            Some(vm) => vm.state(&req.id, &req.exec_id).map_err(status),
            None => self.ns.state(ctx, req),
        }
    }

    fn kill(&self, ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        match self.vm() {
            Some(vm) => vm
                .kill(&req.id, &req.exec_id, req.signal, req.all)
                .map(|()| api::Empty::new())
                .map_err(status),
            None => self.ns.kill(ctx, req),
        }
    }

    fn delete(
        &self,
        ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        match self.vm() {
            Some(vm) => vm.delete(&req.id, &req.exec_id).map_err(status),
            None => self.ns.delete(ctx, req),
        }
    }

    fn pids(&self, ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        match self.vm() {
            Some(vm) => Ok(api::PidsResponse {
                processes: vm.pids(&req.id).map_err(status)?,
                ..Default::default()
            }),
            None => self.ns.pids(ctx, req),
        }
    }

    fn pause(&self, ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        match self.vm() {
            Some(vm) => vm
                .pause(&req.id, true)
                .map(|()| api::Empty::new())
                .map_err(status),
            None => self.ns.pause(ctx, req),
        }
    }

    fn resume(&self, ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        match self.vm() {
            Some(vm) => vm
                .pause(&req.id, false)
                .map(|()| api::Empty::new())
                .map_err(status),
            None => self.ns.resume(ctx, req),
        }
    }

    fn checkpoint(
        &self,
        ctx: &TtrpcContext,
        req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        self.ns.checkpoint(ctx, req)
    }

    fn exec(&self, ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        match self.vm() {
            Some(vm) => vm.exec(&req).map(|()| api::Empty::new()).map_err(status),
            None => self.ns.exec(ctx, req),
        }
    }

    fn resize_pty(
        &self,
        ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        match self.vm() {
            Some(vm) => vm
                .resize(&req.id, &req.exec_id, req.width, req.height)
                .map(|()| api::Empty::new())
                .map_err(status),
            None => self.ns.resize_pty(ctx, req),
        }
    }

    fn close_io(&self, ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        match self.vm() {
            // The stdin forwarder sends CloseStdin when containerd closes its end of the fifo.
            Some(_) => Ok(api::Empty::new()),
            None => self.ns.close_io(ctx, req),
        }
    }

    fn update(&self, ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        match self.vm() {
            Some(_) => Err(status(VmPodError::Unsupported(format!(
                "update {}: the resources of a VM pod are the VM's size, fixed at boot",
                req.id
            )))),
            None => self.ns.update(ctx, req),
        }
    }

    fn wait(&self, ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        match self.vm() {
            Some(vm) => {
                let (code, at) = vm.wait(&req.id, &req.exec_id).map_err(status)?;
                Ok(api::WaitResponse {
                    exit_status: code,
                    exited_at: Some(at).into(),
                    ..Default::default()
                })
            }
            None => self.ns.wait(ctx, req),
        }
    }

    fn stats(&self, ctx: &TtrpcContext, req: api::StatsRequest) -> TtrpcResult<api::StatsResponse> {
        match self.vm() {
            Some(vm) => {
                let s = vm.stats(&req.id).map_err(status)?;
                Ok(api::StatsResponse {
                    stats: Some(crate::metrics::to_any(&crate::metrics::to_metrics(&s))).into(),
                    ..Default::default()
                })
            }
            None => self.ns.stats(ctx, req),
        }
    }

    fn connect(
        &self,
        ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        match self.vm() {
            Some(vm) => Ok(api::ConnectResponse {
                shim_pid: std::process::id(),
                task_pid: vm.task_pid(&req.id),
                version: env!("CARGO_PKG_VERSION").into(),
                ..Default::default()
            }),
            None => self.ns.connect(ctx, req),
        }
    }

    fn shutdown(&self, ctx: &TtrpcContext, req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        match self.vm() {
            Some(vm) => {
                if vm.shutdown() {
                    self.exit.signal();
                }
                Ok(api::Empty::new())
            }
            None => self.ns.shutdown(ctx, req),
        }
    }
}
