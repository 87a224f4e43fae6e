//! The shim's one connection to the agent of a pod VM (agent port 0, taken at boot), split in
//! two halves. Every request is sent under the sending half's lock and answered through a channel
//! registered under its id; one reader thread owns the reading half, blocks on the socket (no
//! timer: an idle pod VM costs the shim no wakeups) and dispatches what the agent sends:
//! responses by id, and a process's output and exit (which the agent sends to the connection that
//! started it) and OOM kills to the pod's handler. When the connection closes (the VM powered off
//! or died), every pending request fails and the handler is told once.
//!
//! What it must never do: hold a lock while waiting for an answer, or panic on what the guest
//! sends (the client decodes every frame as hostile).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use moat_agent_proto::{AgentError, ExitStatus, GuestMessage, Reply, Request, Stream};
use moat_vm::client::AgentReader;
use moat_vm::qemu::QemuVm;
use moat_vm::{AgentClient, VmInstance};

use super::error::{Result, VmPodError};

/// How long one request may take in the guest (a create under TCG takes a fraction of it).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

type Answer = std::result::Result<Reply, AgentError>;

/// What the reader hands to the pod.
pub enum Event {
    Output {
        container_id: String,
        exec_id: Option<String>,
        stream: Stream,
        data: Vec<u8>,
    },
    Exited {
        container_id: String,
        exec_id: Option<String>,
        status: ExitStatus,
    },
    /// The OOM killer killed a process of the container.
    Oom { container_id: String },
    /// The agent connection closed: no more output or exits will come.
    Gone,
}

pub struct Link {
    vm: Mutex<QemuVm>,
    /// The sending half of the agent connection.
    sender: Mutex<AgentClient>,
    pending: Mutex<HashMap<u64, mpsc::Sender<Answer>>>,
    closed: AtomicBool,
    pid: u32,
    virtiofsd_pid: Option<u32>,
    kernel_release: String,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Link {
    /// Take over a booted VM and its agent connection and start the reader thread, which calls
    /// `on_event`.
    pub fn start(
        mut vm: QemuVm,
        on_event: impl Fn(Event) + Send + 'static,
    ) -> moat_vm::Result<Arc<Link>> {
        let mut sender = vm.take_agent().ok_or(moat_vm::VmError::Disconnected)?;
        let reader = sender.split_reader()?;
        let kernel_release = sender.kernel_release().to_string();
        let link = Arc::new(Link {
            pid: vm.pid(),
            virtiofsd_pid: vm.virtiofsd_pid(),
            vm: Mutex::new(vm),
            sender: Mutex::new(sender),
            pending: Mutex::default(),
            closed: AtomicBool::new(false),
            kernel_release,
        });
        let l = link.clone();
        std::thread::spawn(move || l.read_loop(reader, on_event));
        Ok(link)
    }

    /// Host pid of QEMU.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn virtiofsd_pid(&self) -> Option<u32> {
        self.virtiofsd_pid
    }

    /// The guest kernel's release, from the agent's greeting.
    pub fn kernel_release(&self) -> &str {
        &self.kernel_release
    }

    fn read_loop(&self, mut reader: AgentReader, on_event: impl Fn(Event)) {
        loop {
            match reader.next_message() {
                Ok(GuestMessage::Response { id, result }) => {
                    if let Some(tx) = lock(&self.pending).remove(&id) {
                        let _ = tx.send(result);
                    }
                }
                Ok(GuestMessage::Output {
                    container_id,
                    exec_id,
                    stream,
                    data,
                }) => on_event(Event::Output {
                    container_id,
                    exec_id,
                    stream,
                    data,
                }),
                Ok(GuestMessage::Exited {
                    container_id,
                    exec_id,
                    status,
                }) => on_event(Event::Exited {
                    container_id,
                    exec_id,
                    status,
                }),
                Ok(GuestMessage::Oom { container_id }) => on_event(Event::Oom { container_id }),
                Ok(GuestMessage::Ready { .. }) => {}
                Err(e) => {
                    // Under the pending lock: a request registered after this sees `closed`.
                    let mut pending = lock(&self.pending);
                    if !self.closed.swap(true, Ordering::SeqCst) {
                        log::warn!("pod VM (qemu {}): agent connection lost: {e}", self.pid);
                    }
                    pending.clear();
                    break;
                }
            }
        }
        // Pending requests fail (their senders drop).
        lock(&self.pending).clear();
        on_event(Event::Gone);
    }

    /// Send `request` and wait for its answer.
    pub fn request(&self, request: Request) -> Result<Reply> {
        let what = request.describe();
        let (tx, rx) = mpsc::channel();
        let id = {
            // The answer can come before this thread runs again: the id is registered under
            // the lock the reader takes to dispatch it, and `closed` is read under it too.
            let mut a = lock(&self.sender);
            let mut pending = lock(&self.pending);
            if self.closed.load(Ordering::SeqCst) {
                return Err(VmPodError::Disconnected { request: what });
            }
            let id = a.send(request).map_err(|_| VmPodError::Disconnected {
                request: what.clone(),
            })?;
            pending.insert(id, tx);
            id
        };
        match rx.recv_timeout(REQUEST_TIMEOUT) {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(source)) => Err(VmPodError::Agent {
                request: what,
                source,
            }),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                lock(&self.pending).remove(&id);
                Err(VmPodError::Timeout {
                    request: what,
                    secs: REQUEST_TIMEOUT.as_secs(),
                })
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(VmPodError::Disconnected { request: what })
            }
        }
    }

    /// [`Link::request`] for requests answered with `Done`.
    pub fn done(&self, request: Request) -> Result<()> {
        let what = request.describe();
        match self.request(request)? {
            Reply::Done => Ok(()),
            other => Err(VmPodError::UnexpectedReply {
                request: what,
                reply: format!("{other:?}"),
            }),
        }
    }

    /// [`Link::request`] for requests answered with a guest pid.
    pub fn pid_of(&self, request: Request) -> Result<i32> {
        let what = request.describe();
        match self.request(request)? {
            Reply::Pid(p) => Ok(p),
            other => Err(VmPodError::UnexpectedReply {
                request: what,
                reply: format!("{other:?}"),
            }),
        }
    }

    /// Power the VM off (the agent kills every container), killing QEMU after `grace`; QEMU
    /// and virtiofsd are reaped and the run directory removed.
    pub fn power_off(&self, grace: Duration) {
        let mut vm = lock(&self.vm);
        {
            let mut a = lock(&self.sender);
            if !self.closed.swap(true, Ordering::SeqCst) {
                // Its answer (or the end of the connection) goes to the reader; the VM powers
                // off by itself, or is killed after `grace`.
                let _ = a.send(Request::Shutdown);
            }
        }
        if let Err(e) = vm.stop(grace) {
            log::warn!("power off the pod VM (qemu {}): {e}", self.pid);
        }
        // Reaps QEMU if `stop` could not, kills virtiofsd and removes the run directory.
        let _ = vm.kill();
    }
}
