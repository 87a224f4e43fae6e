//! Serving the Task API: the ttrpc server on the socket containerd chose (the shared shim's
//! well-known one, see `shared`), the reaper, and the service registered under both the
//! `containerd.task.v2.Task` name (containerd 1.x) and the `containerd.task.v3.Task` name
//! (containerd 2.x): the messages are the same. Each method is guarded against panics.

use std::collections::HashMap;
use std::os::fd::IntoRawFd;
use std::sync::Arc;

use containerd_shim::monitor::monitor_notify_by_pid;
use containerd_shim::protos::ttrpc::{
    get_status, send_response, Code, Error, MethodHandler, Server, TtrpcContext,
};
use containerd_shim::{Config, Shim};
use nix::sys::wait::{waitpid, WaitStatus};

use crate::router::Router;
use crate::service::Service;

type Methods = HashMap<String, Box<dyn MethodHandler + Send + Sync>>;

fn methods(task: &Arc<Router>, version: &str) -> Methods {
    let svc: Arc<dyn containerd_shim::Task + Send + Sync> = task.clone();
    containerd_shim::protos::create_task(svc)
        .into_iter()
        .map(|(k, v)| {
            let name = k.replace(
                "containerd.task.v3.",
                &format!("containerd.task.{version}."),
            );
            let guarded: Box<dyn MethodHandler + Send + Sync> = Box::new(Guarded {
                method: name.rsplit('/').next().unwrap_or(&name).to_owned(),
                inner: v,
            });
            (name, guarded)
        })
        .collect()
}

/// A Task method whose panic is answered with an error naming the method and the task, instead of
/// leaving containerd's call without an answer: one pod's request must not take the others down
/// (the shared shim). Only where panics unwind: release builds abort on a panic (`panic =
/// "abort"`), which is why the work that could fail hard (creating a container, an exec) runs in
/// the zygote's forked workers, where a crash fails that request alone.
struct Guarded {
    method: String,
    inner: Box<dyn MethodHandler + Send + Sync>,
}

impl MethodHandler for Guarded {
    fn handler(
        &self,
        ctx: TtrpcContext,
        req: containerd_shim::protos::ttrpc::Request,
    ) -> containerd_shim::protos::ttrpc::Result<()> {
        let stream = ctx.mh.stream_id;
        let (tx, conn) = (ctx.res_tx.clone(), ctx.conn_ctx.clone());
        let id = task_id(&req.payload);
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.inner.handler(ctx, req)
        })) {
            Ok(r) => r,
            Err(panic) => {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                log::error!("{} of task {id} panicked: {why}", self.method);
                let status = get_status(
                    Code::INTERNAL,
                    format!("{} of task {id}: the shim panicked: {why}", self.method),
                );
                send_response(stream, Error::RpcStatus(status).into(), tx, &conn)
            }
        }
    }
}

/// The task id of a Task request: field 1 (`string id = 1`) of every request message.
fn task_id(payload: &[u8]) -> String {
    let Some((&0x0a, rest)) = payload.split_first() else {
        return String::new();
    };
    let (mut len, mut shift, mut used) = (0usize, 0, 0);
    for b in rest.iter().take(4) {
        len |= usize::from(b & 0x7f) << shift;
        shift += 7;
        used += 1;
        if b & 0x80 == 0 {
            break;
        }
    }
    rest.get(used..used + len)
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}

/// Reap every child (the shim is a child subreaper: container inits and exec'd processes are
/// reparented to it) and report exits to the exit monitor. A pod VM's QEMU and virtiofsd are left
/// to `moat-vm`, which waits for them itself: the reaper looks first (`WNOWAIT`); so are the
/// `ip`/`tc` commands of a pod VM's network attachment, while they run.
fn reaper() {
    use nix::sys::wait::{waitid, Id, WaitPidFlag};
    loop {
        let pid = match waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Ok(st) => match st.pid() {
                Some(pid)
                    if !crate::vm_pod::owned_pid(pid.as_raw())
                        && !crate::vm_pod::running_net_commands() =>
                {
                    pid
                }
                _ => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    continue;
                }
            },
            Err(nix::errno::Errno::ECHILD) => {
                std::thread::sleep(std::time::Duration::from_millis(20));
                continue;
            }
            Err(_) => continue,
        };
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(pid, code)) => {
                let _ = monitor_notify_by_pid(pid.as_raw(), code);
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                let _ = monitor_notify_by_pid(pid.as_raw(), 128 + sig as i32);
            }
            _ => {}
        }
    }
}

/// A keeper's worker: read the exits the keeper reaped (`<pid> <status>` lines on stdin) and
/// report them as the reaper does.
fn exits_from_keeper() {
    use std::io::BufRead;
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let mut it = line.split_whitespace().map(str::parse::<i32>);
        if let (Some(Ok(pid)), Some(Ok(status))) = (it.next(), it.next()) {
            log::info!("the keeper reaped {pid}: status {status}");
            let _ = monitor_notify_by_pid(pid, status);
        }
    }
}

pub fn serve(args: &[String]) -> Result<(), String> {
    let flags = containerd_shim::parse(&args[1..]).map_err(|e| format!("parse flags: {e}"))?;
    if flags.socket.is_empty() || flags.namespace.is_empty() {
        return Err("-socket and -namespace are required".into());
    }
    let keeper = crate::keeper::keeper_pid();
    if let Some(keeper) = keeper {
        // The worker of the shared shim's keeper: dies with it (containerd then cleans up).
        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
            .map_err(|e| format!("set the parent-death signal: {e}"))?;
        if nix::unistd::getppid().as_raw() != keeper {
            return Err(format!("the keeper {keeper} is gone"));
        }
        let paths = crate::shared::Paths::new(&flags.address, &flags.namespace);
        crate::shared::log_to_file(&paths);
        crate::shared::become_worker(paths);
    } else if crate::shared::asked_to_serve() {
        crate::shared::become_server(crate::shared::Paths::new(&flags.address, &flags.namespace))
            .map_err(|e| e.to_string())?;
    }
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| format!("become a child subreaper: {e}"))?;
    std::thread::spawn(reaper);
    let ttrpc_address =
        std::env::var("TTRPC_ADDRESS").map_err(|_| "TTRPC_ADDRESS is not set".to_string())?;
    let mut shim = Service::new("io.containerd.moat.v2", &flags, &mut Config::default());
    let task = Arc::new(Router::new(
        shim.task_service(ttrpc_address.clone()),
        ttrpc_address,
        &flags.namespace,
    ));

    let path = flags
        .socket
        .strip_prefix("unix://")
        .unwrap_or(&flags.socket)
        .to_owned();
    if let Some(parent) = std::path::Path::new(&path).parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("create {}: {e}", parent.display()))?;
    }
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path)
        .map_err(|e| format!("listen on {path}: {e}"))?;
    if keeper.is_some() {
        // Exits of the processes the keeper reaped (ours before a restart), after the tasks
        // were re-adopted (in `create_task_service`).
        std::thread::spawn(exits_from_keeper);
    }
    let mut server = Server::new()
        .add_listener(listener.into_raw_fd())
        .map_err(|e| format!("ttrpc listener: {e}"))?
        .register_service(methods(&task, "v2"))
        .register_service(methods(&task, "v3"));
    server
        .start()
        .map_err(|e| format!("start the ttrpc server: {e}"))?;
    // Tell `start` (which reads our stdout until EOF) that the socket listens.
    let _ = nix::unistd::dup2(2, 1);
    shim.wait();
    server.shutdown();
    let _ = std::fs::remove_file(&path);
    crate::shared::remove_files();
    // The namespace's state root is shared by its shims: removed only when empty.
    let _ = std::fs::remove_dir(std::path::Path::new("/run/moat-shim").join(&flags.namespace));
    Ok(())
}

#[cfg(test)]
mod tests {
    use containerd_shim::protos::protobuf::Message;
    use containerd_shim::protos::ttrpc::{
        Code, MessageHeader, MethodHandler, Request, Response, TtrpcContext,
    };

    /// A Task method that panics.
    struct Panics;

    impl MethodHandler for Panics {
        fn handler(
            &self,
            _ctx: TtrpcContext,
            _req: Request,
        ) -> containerd_shim::protos::ttrpc::Result<()> {
            panic!("boom in the handler")
        }
    }

    #[test]
    fn a_panicking_method_is_answered_with_an_error_naming_the_task() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (_cancel, cancel_rx) = crossbeam::channel::unbounded();
        let ctx = TtrpcContext {
            fd: -1,
            cancel_rx,
            mh: MessageHeader {
                stream_id: 7,
                ..Default::default()
            },
            res_tx: tx,
            metadata: Default::default(),
            timeout_nano: 0,
            conn_ctx: Default::default(),
        };
        let state = containerd_shim::api::StateRequest {
            id: "pod-a-ctr".into(),
            ..Default::default()
        };
        let req = Request {
            payload: state.write_to_bytes().unwrap(),
            ..Default::default()
        };
        let guarded = super::Guarded {
            method: "State".into(),
            inner: Box::new(Panics),
        };
        // The server thread carries on (the call returns), and the caller gets an answer.
        guarded.handler(ctx, req).expect("answered");
        let (mh, body) = rx.recv().expect("a response frame");
        assert_eq!(mh.stream_id, 7);
        let res = Response::parse_from_bytes(&body).expect("a ttrpc response");
        let status = res.status.as_ref().expect("an error status");
        assert_eq!(status.code(), Code::INTERNAL);
        assert!(
            status.message.contains("State of task pod-a-ctr")
                && status.message.contains("boom in the handler"),
            "{}",
            status.message
        );
    }

    #[test]
    fn task_id_is_field_one_of_the_request() {
        use containerd_shim::protos::protobuf::Message;
        let id = "a".repeat(200);
        let req = containerd_shim::api::StateRequest {
            id: id.clone(),
            exec_id: "e1".into(),
            ..Default::default()
        };
        assert_eq!(super::task_id(&req.write_to_bytes().unwrap()), id);
        assert_eq!(super::task_id(&[]), "");
        assert_eq!(super::task_id(&[0x12, 1, b'x']), "");
    }
}
