//! The request loop: one thread, one `poll(2)` over the port and the output pipes, and a
//! non-blocking reap of exited children on every turn. Single-threaded on purpose:
//! `moat-container` forks with clone3 and refuses (EBUSY) to do so from a multi-threaded process,
//! since the child runs Rust code that could meet a lock held by another thread.
//!
//! The port is non-blocking and its state is probed by reading it (0: no host connected,
//! EAGAIN: connected and quiet). Every new connection gets a `Ready`; what the agent would send
//! while no host is connected is dropped, and unsent bytes are dropped when the host goes, so a
//! new connection never starts mid-frame. In a `moat.sandbox=single` guest a disconnect is
//! normal (each runtime command is one connection) and the VM powers off once the container's
//! init has exited; otherwise the host closing the port ends the sandbox.
//!
//! A `Stdin` request is answered once its bytes are in the process's pipe (the pipe is polled
//! for writing meanwhile), which paces the host without the agent buffering more than a chunk.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use moat_agent_proto::{
    encode, AgentError, ContainerStats, DecodeError, Decoder, ErrorCode, ExitStatus, GuestMessage,
    GuestProcess, HostMessage, Reply, Request, RootfsDisk, SharedMount, Stream, PROTOCOL_VERSION,
};
use moat_container::Store;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::error::{AgentFailure, Result};
use crate::stdin::{Pumped, StdinPipe};
use crate::stdio::{lend, Pipes};
use crate::{boot, log, shared};

/// A container id and, for an exec'd process, its exec id.
pub type Key = (String, Option<String>);

struct Proc {
    pid: i32,
    open_pipes: u8,
    status: Option<(ExitStatus, Instant)>,
}

struct Pipe {
    file: File,
    key: Key,
    stream: Stream,
}

struct Agent {
    /// The port, non-blocking: a read returns 0 while no host is connected, EAGAIN while one is
    /// connected and quiet; a write returns EAGAIN while no host is connected.
    port: File,
    /// A host is connected to the port (it gets a `Ready` on every new connection).
    connected: bool,
    /// Encoded frames not yet written to the port; dropped when the host goes away, so a new
    /// connection never starts in the middle of a frame.
    out: Vec<u8>,
    /// `moat.sandbox=single` on the kernel command line: the host may disconnect and come back
    /// (each runtime command is a new connection), and the VM powers off once the container's
    /// init has exited. Otherwise the host closing the port ends the sandbox.
    single: bool,
    init_exited: bool,
    store: Store,
    bundles: HashMap<String, PathBuf>,
    procs: HashMap<Key, Proc>,
    pipes: Vec<Pipe>,
    stdins: HashMap<Key, StdinPipe>,
    /// The host's shared directory is mounted at [`shared::SHARE_MOUNT`].
    share_mounted: bool,
}

const BUNDLES: &str = "/run/moat-agent/bundles";
/// How long an exit waits for the process's pipes to close (a daemon may hold them open).
const EOF_GRACE: Duration = Duration::from_millis(500);
/// Poll timeout: the latency of noticing an exit (and, while no host is connected, a new one).
const TICK_MS: u16 = 20;
/// Above this many unsent bytes the output pipes are not read (back-pressure on containers).
const OUT_LIMIT: usize = 4 << 20;

pub fn serve(port_path: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let port = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(port_path)
        .map_err(|e| AgentFailure::io("open port", port_path, e))?;
    let single = std::fs::read_to_string("/proc/cmdline")
        .unwrap_or_default()
        .split_whitespace()
        .any(|w| w == moat_agent_proto::SINGLE_SANDBOX_FLAG);
    let mut agent = Agent {
        port,
        connected: false,
        out: Vec::new(),
        single,
        init_exited: false,
        store: Store::new("/run/moat"),
        bundles: HashMap::new(),
        procs: HashMap::new(),
        pipes: Vec::new(),
        stdins: HashMap::new(),
        share_mounted: false,
    };
    agent.run();
    Ok(())
}

impl Agent {
    /// Queue `msg` for the host; dropped while no host is connected.
    fn send(&mut self, msg: &GuestMessage) {
        if !self.connected {
            return;
        }
        match encode(msg) {
            Ok(frame) => {
                self.out.extend_from_slice(&frame);
                self.flush();
            }
            Err(e) => log::error(&format!("encode reply: {e}")),
        }
    }

    /// Write what the port takes now.
    fn flush(&mut self) {
        while !self.out.is_empty() {
            match self.port.write(&self.out) {
                Ok(0) => break,
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    log::error(&format!("write to host: {e}"));
                    self.out.clear();
                    break;
                }
            }
        }
    }

    /// Flush for up to `limit` (before powering off).
    fn flush_all(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.connected && !self.out.is_empty() && Instant::now() < deadline {
            let mut fds = [PollFd::new(self.port.as_fd(), PollFlags::POLLOUT)];
            let _ = poll(&mut fds, PollTimeout::from(TICK_MS));
            self.flush();
        }
    }

    fn run(&mut self) {
        let mut dec = Decoder::<HostMessage>::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let (port_events, ready_pipes) = match self.wait_ready() {
                Ok(r) => r,
                Err(e) => {
                    log::error(&format!("poll: {e}"));
                    return;
                }
            };
            for i in ready_pipes.into_iter().rev() {
                self.drain_pipe(i, &mut buf);
            }
            // While disconnected, probe the port every tick (poll reports HUP at once).
            if !self.connected || !port_events.is_empty() {
                match self.port.read(&mut buf) {
                    // No data and no host.
                    Ok(0) => {
                        if self.connected {
                            self.connected = false;
                            self.out.clear();
                            dec = Decoder::new();
                            if !self.single {
                                log::info("host closed the port; shutting down");
                                self.shutdown();
                                return;
                            }
                            log::info("host disconnected");
                        }
                    }
                    Ok(n) => {
                        self.on_connected();
                        dec.push(&buf[..n]);
                        while let Some(m) = dec.next_message() {
                            if self.dispatch(m) {
                                self.flush_all(Duration::from_secs(2));
                                return;
                            }
                        }
                    }
                    // A host is connected and quiet.
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => self.on_connected(),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        log::error(&format!("read from host: {e}"));
                        self.shutdown();
                        return;
                    }
                }
            }
            if port_events.contains(PollFlags::POLLOUT) {
                self.flush();
            }
            self.pump_stdins();
            self.reap();
            self.report_exits();
            if self.single && self.init_exited {
                log::info("the container exited; shutting down");
                self.flush_all(Duration::from_secs(2));
                self.shutdown();
                return;
            }
        }
    }

    fn on_connected(&mut self) {
        if !self.connected {
            self.connected = true;
            let release = nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default();
            self.send(&GuestMessage::Ready {
                version: PROTOCOL_VERSION,
                kernel_release: release,
            });
        }
    }

    /// Wait for the port or a pipe to be ready (or one tick): (the port's events, ready pipes).
    /// The port is polled only while a host is connected.
    fn wait_ready(&self) -> nix::Result<(PollFlags, Vec<usize>)> {
        let mut fds = Vec::new();
        if self.connected {
            let mut ev = PollFlags::POLLIN;
            if !self.out.is_empty() {
                ev |= PollFlags::POLLOUT;
            }
            fds.push(PollFd::new(self.port.as_fd(), ev));
        }
        let first_pipe = fds.len();
        let n_pipes = if self.out.len() < OUT_LIMIT {
            for p in &self.pipes {
                fds.push(PollFd::new(p.file.as_fd(), PollFlags::POLLIN));
            }
            self.pipes.len()
        } else {
            0
        };
        // Wake up when a full stdin pipe takes bytes again.
        for s in self.stdins.values().filter(|s| s.has_pending()) {
            fds.push(PollFd::new(s.file.as_fd(), PollFlags::POLLOUT));
        }
        match poll(&mut fds, PollTimeout::from(TICK_MS)) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => return Ok((PollFlags::empty(), vec![])),
            Err(e) => return Err(e),
        }
        let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
        let pipes = fds[first_pipe..first_pipe + n_pipes]
            .iter()
            .enumerate()
            .filter(|(_, f)| ready(f))
            .map(|(i, _)| i)
            .collect();
        let port = if self.connected {
            fds[0].revents().unwrap_or(PollFlags::empty())
        } else {
            PollFlags::empty()
        };
        Ok((port, pipes))
    }

    fn drain_pipe(&mut self, i: usize, buf: &mut [u8]) {
        let n = loop {
            match self.pipes[i].file.read(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => break r.unwrap_or(0),
            }
        };
        if n == 0 {
            let p = self.pipes.swap_remove(i);
            if let Some(proc_) = self.procs.get_mut(&p.key) {
                proc_.open_pipes = proc_.open_pipes.saturating_sub(1);
            }
            return;
        }
        let p = &self.pipes[i];
        let msg = GuestMessage::Output {
            container_id: p.key.0.clone(),
            exec_id: p.key.1.clone(),
            stream: p.stream,
            data: buf[..n].to_vec(),
        };
        self.send(&msg);
    }

    /// Write pending stdin bytes; answer the requests whose bytes are all in, drop the pipes the
    /// host closed or the process no longer reads.
    fn pump_stdins(&mut self) {
        let keys: Vec<Key> = self.stdins.keys().cloned().collect();
        for key in keys {
            let Some(s) = self.stdins.get_mut(&key) else {
                continue;
            };
            match s.pump() {
                Ok(Pumped::Pending) => {}
                Ok(Pumped::Drained(answer)) => {
                    let done = s.done();
                    if done {
                        self.stdins.remove(&key);
                    }
                    if let Some(id) = answer {
                        self.send(&GuestMessage::Response {
                            id,
                            result: Ok(Reply::Done),
                        });
                    }
                }
                Err(e) => {
                    let waiting = s.take_waiting();
                    self.stdins.remove(&key);
                    if let Some(id) = waiting {
                        self.send(&GuestMessage::Response {
                            id,
                            result: Err(AgentError {
                                code: ErrorCode::Io,
                                message: format!("stdin of {key:?}: {e}"),
                            }),
                        });
                    }
                }
            }
        }
    }

    /// `Stdin`: queue the bytes; the answer comes from [`Agent::pump_stdins`].
    fn stdin(&mut self, id: u64, key: Key, data: Vec<u8>) -> Option<Result<Reply>> {
        let Some(s) = self.stdins.get_mut(&key) else {
            return Some(Err(AgentFailure::NotFound(format!("stdin of {key:?}"))));
        };
        if s.busy() {
            return Some(Err(AgentFailure::Busy(format!(
                "stdin of {key:?}: the previous chunk is not written yet"
            ))));
        }
        s.push(id, data);
        self.pump_stdins();
        None
    }

    /// Handle one decoded (or undecodable) frame; true when the loop must end.
    fn dispatch(&mut self, m: std::result::Result<HostMessage, DecodeError>) -> bool {
        match m {
            Ok(HostMessage {
                id,
                request:
                    Request::Stdin {
                        container_id,
                        exec_id,
                        data,
                    },
            }) => {
                if let Some(r) = self.stdin(id, (container_id, exec_id), data) {
                    let result = r.map_err(|e| e.to_wire());
                    self.send(&GuestMessage::Response { id, result });
                }
                false
            }
            Ok(m) => {
                let shutdown = m.request == Request::Shutdown;
                let result = self.handle(m.request).map_err(|e| {
                    log::error(&format!("request {}: {e}", m.id));
                    e.to_wire()
                });
                self.send(&GuestMessage::Response { id: m.id, result });
                shutdown
            }
            Err(e) => {
                let id = match &e {
                    DecodeError::Malformed { id, .. } => id.unwrap_or(0),
                    DecodeError::TooLarge { .. } => 0,
                };
                self.send(&GuestMessage::Response {
                    id,
                    result: Err(moat_agent_proto::AgentError {
                        code: moat_agent_proto::ErrorCode::Malformed,
                        message: e.to_string(),
                    }),
                });
                false
            }
        }
    }

    /// Collect every exited child (we are PID 1: orphans are ours too).
    fn reap(&mut self) {
        loop {
            let (pid, status) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, c)) => (pid, ExitStatus::Code(c)),
                Ok(WaitStatus::Signaled(pid, s, _)) => (pid, ExitStatus::Signal(s as i32)),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            if let Some(p) = self.procs.values_mut().find(|p| p.pid == pid.as_raw()) {
                p.status = Some((status, Instant::now()));
            }
        }
    }

    /// Send `Exited` for each process that ended and whose output is flushed (or late).
    fn report_exits(&mut self) {
        let done: Vec<Key> = self
            .procs
            .iter()
            .filter(|(_, p)| {
                p.status
                    .is_some_and(|(_, t)| p.open_pipes == 0 || t.elapsed() > EOF_GRACE)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in done {
            if let Some(Proc {
                status: Some((status, _)),
                ..
            }) = self.procs.remove(&key)
            {
                if key.1.is_none() {
                    self.init_exited = true;
                }
                if let Some(mut s) = self.stdins.remove(&key) {
                    if let Some(id) = s.take_waiting() {
                        self.send(&GuestMessage::Response {
                            id,
                            result: Err(AgentError {
                                code: ErrorCode::NotFound,
                                message: format!("stdin of {key:?}: the process exited"),
                            }),
                        });
                    }
                }
                self.send(&GuestMessage::Exited {
                    container_id: key.0,
                    exec_id: key.1,
                    status,
                });
            }
        }
    }

    fn handle(&mut self, req: Request) -> Result<Reply> {
        match req {
            Request::Ping => Ok(Reply::Pong),
            Request::Create {
                container_id,
                config_json,
                rootfs,
                stdin,
                shared,
            } => self.create(&container_id, &config_json, &rootfs, stdin, &shared),
            Request::Start { container_id } => {
                moat_container::start::start(&self.store, &container_id)?;
                Ok(Reply::Done)
            }
            Request::Exec {
                container_id,
                exec_id,
                process_json,
                stdin,
            } => self.exec(&container_id, &exec_id, &process_json, stdin),
            // Answered by `dispatch` (deferred until written).
            Request::Stdin { .. } => Err(AgentFailure::Invalid("stdin".into())),
            Request::CloseStdin {
                container_id,
                exec_id,
            } => {
                let key = (container_id, exec_id);
                let s = self
                    .stdins
                    .get_mut(&key)
                    .ok_or_else(|| AgentFailure::NotFound(format!("stdin of {key:?}")))?;
                s.close_when_drained();
                if s.done() {
                    self.stdins.remove(&key);
                }
                Ok(Reply::Done)
            }
            Request::Pause { container_id } => {
                moat_container::pause::pause(&self.store, &container_id)?;
                Ok(Reply::Done)
            }
            Request::Resume { container_id } => {
                moat_container::pause::resume(&self.store, &container_id)?;
                Ok(Reply::Done)
            }
            Request::Stats { container_id } => self.stats(&container_id),
            Request::Processes { container_id } => self.processes(&container_id),
            Request::Kill {
                container_id,
                exec_id: Some(exec_id),
                signal,
                ..
            } => {
                let key = (container_id, Some(exec_id));
                let p = self
                    .procs
                    .get(&key)
                    .ok_or_else(|| AgentFailure::NotFound(format!("exec {key:?}")))?;
                let sig = nix::sys::signal::Signal::try_from(signal)
                    .map_err(|_| AgentFailure::Invalid(format!("signal {signal}")))?;
                nix::sys::signal::kill(Pid::from_raw(p.pid), sig).map_err(|errno| {
                    AgentFailure::Sys {
                        what: format!("kill {} {sig}", p.pid),
                        errno,
                    }
                })?;
                Ok(Reply::Done)
            }
            Request::Kill {
                container_id,
                exec_id: None,
                signal,
                all,
            } => {
                moat_container::kill::kill(&self.store, &container_id, signal, all)?;
                Ok(Reply::Done)
            }
            Request::Delete {
                container_id,
                force,
            } => {
                moat_container::delete::delete(&self.store, &container_id, force)?;
                self.release_bundle(&container_id);
                Ok(Reply::Done)
            }
            Request::Shutdown => {
                self.shutdown();
                Ok(Reply::Done)
            }
        }
    }

    fn cgroup(&self, id: &str) -> Result<moat_cgroups::Cgroup> {
        self.store
            .load(id)?
            .cgroup
            .ok_or_else(|| AgentFailure::NotFound(format!("the cgroup of container {id}")))
    }

    fn stats(&self, id: &str) -> Result<Reply> {
        let s = self.cgroup(id)?.stats()?;
        Ok(Reply::Stats(ContainerStats {
            cpu_usage_ns: s.cpu.usage.total,
            memory_usage_bytes: s.memory.usage.usage,
            memory_max_usage_bytes: s.memory.usage.max,
            memory_limit_bytes: s.memory.usage.limit,
            pids_current: s.pids.current,
            pids_limit: s.pids.limit,
        }))
    }

    fn processes(&self, id: &str) -> Result<Reply> {
        let pids = self.cgroup(id)?.pids()?;
        let procs = pids
            .into_iter()
            .map(|pid| {
                let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let command = raw
                    .split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ");
                GuestProcess { pid, command }
            })
            .collect();
        Ok(Reply::Processes(procs))
    }

    fn create(
        &mut self,
        id: &str,
        config_json: &str,
        disk: &RootfsDisk,
        stdin: bool,
        shared: &[SharedMount],
    ) -> Result<Reply> {
        moat_container::state::validate_id(id)?;
        if self.bundles.contains_key(id) {
            return Err(AgentFailure::Exists(format!("container {id}")));
        }
        let mut config: serde_json::Value = serde_json::from_str(config_json)
            .map_err(|e| AgentFailure::Invalid(format!("config.json: {e}")))?;
        let root = config
            .as_object_mut()
            .ok_or_else(|| AgentFailure::Invalid("config.json: not an object".into()))?
            .entry("root")
            .or_insert_with(|| serde_json::json!({}));
        let Some(root) = root.as_object_mut() else {
            return Err(AgentFailure::Invalid(
                "config.json: root is not an object".into(),
            ));
        };
        root.insert("path".into(), "rootfs".into());
        shared::rewrite(&mut config, shared)?;
        if !shared.is_empty() && !self.share_mounted {
            shared::mount_share()?;
            self.share_mounted = true;
        }
        if !["ext4", "ext2", "xfs", "erofs", "squashfs"].contains(&disk.fstype.as_str()) {
            return Err(AgentFailure::Invalid(format!("fstype {:?}", disk.fstype)));
        }
        let bundle = Path::new(BUNDLES).join(id);
        let rootfs = bundle.join("rootfs");
        std::fs::create_dir_all(&rootfs).map_err(|e| AgentFailure::io("create", &rootfs, e))?;
        self.bundles.insert(id.to_string(), bundle.clone());
        let r = self.create_in(id, &bundle, &rootfs, &config, disk, stdin);
        if r.is_err() {
            self.release_bundle(id);
        }
        r
    }

    fn create_in(
        &mut self,
        id: &str,
        bundle: &Path,
        rootfs: &Path,
        config: &serde_json::Value,
        disk: &RootfsDisk,
        stdin: bool,
    ) -> Result<Reply> {
        let dev = boot::find_disk(&disk.serial, Duration::from_secs(5))?;
        let flags = if disk.readonly {
            MsFlags::MS_RDONLY
        } else {
            MsFlags::empty()
        };
        mount(
            Some(&dev),
            rootfs,
            Some(disk.fstype.as_str()),
            flags,
            None::<&str>,
        )
        .map_err(|e| {
            AgentFailure::Rootfs(format!(
                "mount {} at {}: {e}",
                dev.display(),
                rootfs.display()
            ))
        })?;
        let cfg = bundle.join("config.json");
        std::fs::write(&cfg, config.to_string()).map_err(|e| AgentFailure::io("write", &cfg, e))?;
        let pipes = Pipes::new(stdin)?;
        let created = {
            let _lent = lend(&pipes)?;
            let opts = moat_container::CreateOptions {
                id: id.to_string(),
                bundle: bundle.to_path_buf(),
                ..Default::default()
            };
            let created = moat_container::create(&self.store, &opts)?;
            self.register((id.to_string(), None), created.pid);
            created
        };
        self.watch(pipes, (id.to_string(), None))?;
        Ok(Reply::Pid(created.pid))
    }

    fn exec(&mut self, id: &str, exec_id: &str, process_json: &str, stdin: bool) -> Result<Reply> {
        let key = (id.to_string(), Some(exec_id.to_string()));
        if self.procs.contains_key(&key) {
            return Err(AgentFailure::Exists(format!("exec {exec_id} in {id}")));
        }
        let process: oci_spec::runtime::Process = serde_json::from_str(process_json)
            .map_err(|e| AgentFailure::Invalid(format!("process: {e}")))?;
        let pipes = Pipes::new(stdin)?;
        let pid = {
            let _lent = lend(&pipes)?;
            let opts = moat_container::exec::ExecOptions {
                id: id.to_string(),
                ..Default::default()
            };
            let pid = moat_container::exec::exec(&self.store, &opts, process)?.as_raw();
            self.register(key.clone(), pid);
            pid
        };
        self.watch(pipes, key)?;
        Ok(Reply::Pid(pid))
    }

    fn watch(&mut self, pipes: Pipes, key: Key) -> Result<()> {
        let (readers, stdin) = pipes.into_ends()?;
        for (file, stream) in readers {
            self.pipes.push(Pipe {
                file,
                key: key.clone(),
                stream,
            });
        }
        if let Some(w) = stdin {
            self.stdins.insert(key, StdinPipe::new(w));
        }
        Ok(())
    }

    fn register(&mut self, key: Key, pid: i32) {
        self.procs.insert(
            key,
            Proc {
                pid,
                open_pipes: 2,
                status: None,
            },
        );
    }

    fn release_bundle(&mut self, id: &str) {
        if let Some(bundle) = self.bundles.remove(id) {
            let rootfs = bundle.join("rootfs");
            let _ = umount2(&rootfs, MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir_all(&bundle);
        }
    }

    fn shutdown(&mut self) {
        let ids: Vec<String> = self.bundles.keys().cloned().collect();
        for id in ids {
            if let Err(e) = moat_container::delete::delete(&self.store, &id, true) {
                log::error(&format!("delete {id}: {e}"));
            }
            self.release_bundle(&id);
        }
    }
}
