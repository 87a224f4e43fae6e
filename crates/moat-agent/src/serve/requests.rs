//! The requests that act on containers: create (the rootfs disk or, for a pod VM's containers, a
//! directory of the share; the shared bind mounts; the config handed to `moat-container`), start,
//! exec, kill, pause/resume, stats, processes, delete, the guest's network (`net`) and the
//! sandbox's shutdown. Each runs to completion inside one turn of the loop.

use std::path::Path;
use std::time::Duration;

use moat_agent_proto::{
    ContainerStats, GuestProcess, Reply, Request, RootfsDisk, SharedMount, SharedRootfs, Stream,
};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::Pid;

use super::{Agent, Key, Pipe, Proc, BUNDLES};
use crate::error::{AgentFailure, Result};
use crate::stdin::StdinPipe;
use crate::stdio::{lend, lend_null, Pipes};
use crate::tty::{ConsoleChannel, Master};
use crate::{boot, log, shared};

impl Agent {
    /// Handle request `req` from connection `conn` (which then owns what it starts).
    pub(super) fn handle(&mut self, conn: usize, req: Request) -> Result<Reply> {
        use crate::restore::{self, Phase};
        if self.phase == Phase::Saved && !matches!(req, Request::Ping | Request::Restored(_)) {
            return Err(AgentFailure::Invalid(format!(
                "{}: this clone of a template was not made unique yet (`restored` comes first)",
                req.describe()
            )));
        }
        match req {
            Request::Ping => Ok(Reply::Pong),
            Request::PrepareTemplate => {
                if self.phase != Phase::Template {
                    return Err(AgentFailure::Invalid(
                        "prepare the template: this VM was not booted as a template".into(),
                    ));
                }
                restore::prepare()?;
                self.phase = Phase::Saved;
                Ok(Reply::Done)
            }
            // A repeat (the host resends until answered): already done.
            Request::Restored(_) if self.phase == Phase::Clone => Ok(Reply::Done),
            Request::Restored(r) => {
                if self.phase != Phase::Saved {
                    return Err(AgentFailure::Invalid(
                        "make the clone unique: this VM is not a clone of a template".into(),
                    ));
                }
                restore::make_unique(&r)?;
                self.phase = Phase::Clone;
                self.single = r.single;
                Ok(Reply::Done)
            }
            Request::Create {
                container_id,
                config_json,
                rootfs,
                stdin,
                shared,
                files,
            } => self.create(
                &container_id,
                &config_json,
                Root::Disk(&rootfs),
                stdin,
                &shared,
                &files,
            ),
            Request::CreateShared {
                container_id,
                config_json,
                rootfs,
                stdin,
                shared,
            } => self.create(
                &container_id,
                &config_json,
                Root::Shared(&rootfs),
                stdin,
                &shared,
                &[],
            ),
            Request::Start { container_id } => {
                moat_container::start::start(&self.store, &container_id)?;
                if let Ok(cg) = self.cgroup(&container_id) {
                    self.ooms.add(&container_id, cg, None);
                }
                // A host relay that attached before (a terminal's) keeps the init's events.
                self.owners.entry((container_id, None)).or_insert(conn);
                Ok(Reply::Done)
            }
            Request::Attach {
                container_id,
                exec_id,
            } => {
                let key = (container_id, exec_id);
                if !self.procs.contains_key(&key) {
                    return Err(AgentFailure::NotFound(format!("process {key:?}")));
                }
                self.owners.insert(key, conn);
                Ok(Reply::Done)
            }
            Request::Resize {
                container_id,
                exec_id,
                width,
                height,
            } => {
                let key = (container_id, exec_id);
                let master = self
                    .ttys
                    .get(&key)
                    .ok_or_else(|| AgentFailure::NotFound(format!("the terminal of {key:?}")))?;
                crate::tty::resize(master, width, height)?;
                Ok(Reply::Done)
            }
            Request::Exec {
                container_id,
                exec_id,
                process_json,
                stdin,
            } => {
                let r = self.exec(&container_id, &exec_id, &process_json, stdin)?;
                self.owners.insert((container_id, Some(exec_id)), conn);
                Ok(r)
            }
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
                self.owners.retain(|k, _| k.0 != container_id);
                self.stdins.retain(|k, _| k.0 != container_id);
                self.ttys.retain(|k, _| k.0 != container_id);
                Ok(Reply::Done)
            }
            Request::Shutdown => {
                self.shutdown();
                Ok(Reply::Done)
            }
            Request::Network { interfaces, routes } => {
                crate::net::configure(&interfaces, &routes)?;
                Ok(Reply::Done)
            }
            Request::Pod(settings) => {
                crate::pod::apply(&settings)?;
                Ok(Reply::Done)
            }
            Request::Dial { stream, port } => self.dial(conn, stream, port),
        }
    }

    /// [`Request::Dial`]: connect to `127.0.0.1:port` here and carry the connection as a
    /// process of key ([`moat_agent_proto::FORWARD_ID`], `stream`) owned by `conn`; it "exits"
    /// when the guest side closes (see `drain_pipe`).
    fn dial(&mut self, conn: usize, stream: String, port: u16) -> Result<Reply> {
        let key = (moat_agent_proto::FORWARD_ID.to_string(), Some(stream));
        if self.procs.contains_key(&key) {
            return Err(AgentFailure::Exists(format!("forward {key:?}")));
        }
        let addr = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
        let what = format!("127.0.0.1:{port}");
        let sock = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| AgentFailure::io("connect to", &what, e))?;
        // Both ends below share the socket's file status: non-blocking for the poll loop.
        sock.set_nonblocking(true)
            .map_err(|e| AgentFailure::io("set non-blocking", &what, e))?;
        let fd = std::os::fd::OwnedFd::from(sock);
        let reader = fd
            .try_clone()
            .map_err(|e| AgentFailure::io("duplicate", &what, e))?;
        self.pipes.push(Pipe {
            file: std::fs::File::from(reader),
            key: key.clone(),
            stream: Stream::Stdout,
        });
        self.stdins
            .insert(key.clone(), StdinPipe::new(std::fs::File::from(fd)));
        self.register(key.clone(), super::FORWARD_PID, 1);
        self.owners.insert(key, conn);
        Ok(Reply::Done)
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
        source: Root<'_>,
        stdin: bool,
        shared: &[SharedMount],
        files: &[moat_agent_proto::InlineFile],
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
        let bundle = Path::new(BUNDLES).join(id);
        let files_dir = bundle.join("files");
        shared::rewrite(&mut config, shared, &files_dir, files)?;
        let pod_pid = config["linux"]["namespaces"].as_array().is_some_and(|ns| {
            ns.iter()
                .any(|n| n["type"] == "pid" && n["path"] == moat_agent_proto::POD_PID_NS)
        });
        if pod_pid {
            self.ensure_pod_pid_ns()?;
        }
        let needs_share = !shared.is_empty() || matches!(source, Root::Shared(_));
        if needs_share && !self.share_mounted {
            shared::mount_share()?;
            self.share_mounted = true;
        }
        match source {
            Root::Disk(disk) => {
                if !["ext4", "ext2", "xfs", "erofs", "squashfs"].contains(&disk.fstype.as_str()) {
                    return Err(AgentFailure::Invalid(format!("fstype {:?}", disk.fstype)));
                }
            }
            Root::Shared(r) => {
                shared::source(&r.path)?;
            }
        }
        let rootfs = bundle.join("rootfs");
        std::fs::create_dir_all(&rootfs).map_err(|e| AgentFailure::io("create", &rootfs, e))?;
        self.bundles.insert(id.to_string(), bundle.clone());
        let r = shared::write_files(&files_dir, files)
            .and_then(|()| self.create_in(id, &bundle, &rootfs, &config, source, stdin));
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
        root: Root<'_>,
        stdin: bool,
    ) -> Result<Reply> {
        match root {
            Root::Disk(disk) if disk.overlay => {
                let lower = bundle.join("lower");
                mount_disk(disk, &lower)?;
                overlay_on(&lower, &bundle.join("layer"), rootfs)?;
            }
            Root::Disk(disk) => mount_disk(disk, rootfs)?,
            Root::Shared(r) => shared::bind_rootfs(r, rootfs)?,
        }
        let cfg = bundle.join("config.json");
        std::fs::write(&cfg, config.to_string()).map_err(|e| AgentFailure::io("write", &cfg, e))?;
        let key = (id.to_string(), None);
        if crate::tty::wants_terminal(&config["process"]) {
            let console = ConsoleChannel::new()?;
            let created = {
                let _lent = lend_null()?;
                let opts = moat_container::CreateOptions {
                    id: id.to_string(),
                    bundle: bundle.to_path_buf(),
                    console: Some(console.theirs.clone()),
                    ..Default::default()
                };
                moat_container::create(&self.store, &opts)?
            };
            self.register(key.clone(), created.pid, 1);
            let master = console.receive_master(&format!("container {id}"))?;
            self.watch_tty(master, key)?;
            return Ok(Reply::Pid(created.pid));
        }
        let pipes = Pipes::new(stdin)?;
        let created = {
            let _lent = lend(&pipes)?;
            let opts = moat_container::CreateOptions {
                id: id.to_string(),
                bundle: bundle.to_path_buf(),
                ..Default::default()
            };
            let created = moat_container::create(&self.store, &opts)?;
            self.register(key.clone(), created.pid, 2);
            created
        };
        self.watch(pipes, key)?;
        Ok(Reply::Pid(created.pid))
    }

    fn exec(&mut self, id: &str, exec_id: &str, process_json: &str, stdin: bool) -> Result<Reply> {
        let key = (id.to_string(), Some(exec_id.to_string()));
        if self.procs.contains_key(&key) {
            return Err(AgentFailure::Exists(format!("exec {exec_id} in {id}")));
        }
        let process: oci_spec::runtime::Process = serde_json::from_str(process_json)
            .map_err(|e| AgentFailure::Invalid(format!("process: {e}")))?;
        if process.terminal().unwrap_or(false) {
            let console = ConsoleChannel::new()?;
            let pid = {
                let _lent = lend_null()?;
                let opts = moat_container::exec::ExecOptions {
                    id: id.to_string(),
                    console: Some(console.theirs.clone()),
                    ..Default::default()
                };
                moat_container::exec::exec(&self.store, &opts, process)?.as_raw()
            };
            self.register(key.clone(), pid, 1);
            let master = console.receive_master(&format!("exec {exec_id} in {id}"))?;
            self.watch_tty(master, key)?;
            return Ok(Reply::Pid(pid));
        }
        let pipes = Pipes::new(stdin)?;
        let pid = {
            let _lent = lend(&pipes)?;
            let opts = moat_container::exec::ExecOptions {
                id: id.to_string(),
                ..Default::default()
            };
            let pid = moat_container::exec::exec(&self.store, &opts, process)?.as_raw();
            self.register(key.clone(), pid, 2);
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

    /// A terminal's master: read as the process's only output stream, written as its stdin
    /// (a terminal always has one), kept for `Resize`.
    fn watch_tty(&mut self, master: std::os::fd::OwnedFd, key: Key) -> Result<()> {
        let m = Master::split(master)?;
        self.pipes.push(Pipe {
            file: m.output,
            key: key.clone(),
            stream: Stream::Stdout,
        });
        self.stdins.insert(key.clone(), StdinPipe::new(m.input));
        self.ttys.insert(key, m.control);
        Ok(())
    }

    /// Track process `key` and its `pipes` output streams (2, or 1 for a terminal).
    fn register(&mut self, key: Key, pid: i32, pipes: u8) {
        let pidfd = moat_sys::process::pidfd_open(nix::unistd::Pid::from_raw(pid)).ok();
        self.procs.insert(
            key,
            Proc {
                pid,
                pidfd,
                open_pipes: pipes,
                status: None,
            },
        );
    }

    /// The pod's shared pid namespace: a child of the agent in a new pid namespace, doing
    /// nothing (the pause process of a pod on a host), its namespace bound at
    /// [`moat_agent_proto::POD_PID_NS`] for containers to join. Made on first use.
    fn ensure_pod_pid_ns(&mut self) -> Result<()> {
        if self.pod_pid_ns.is_some() {
            return Ok(());
        }
        let sys = |what: &str| {
            let what = what.to_string();
            move |errno| AgentFailure::Sys { what, errno }
        };
        match moat_sys::process::clone3(nix::libc::CLONE_NEWPID as u64, false)
            .map_err(sys("start the pod's pid namespace"))?
        {
            moat_sys::process::Forked::Child => {
                // Nothing of the agent's: no port, no container pipe stays open here. Orphans
                // of the pod's processes become this init's children: the kernel reaps them.
                let _ = moat_sys::process::close_from(3);
                crate::boot::never_oom_killed();
                let _ = moat_sys::process::reap_children_automatically();
                loop {
                    nix::unistd::pause();
                }
            }
            moat_sys::process::Forked::Parent { pid, .. } => {
                self.pod_pid_ns = Some(pid.as_raw());
                let target = Path::new(moat_agent_proto::POD_PID_NS);
                if let Some(d) = target.parent() {
                    std::fs::create_dir_all(d).map_err(|e| AgentFailure::io("create", d, e))?;
                }
                std::fs::write(target, b"").map_err(|e| AgentFailure::io("create", target, e))?;
                let ns = format!("/proc/{}/ns/pid", pid.as_raw());
                mount(
                    Some(ns.as_str()),
                    target,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(sys(&format!("bind {ns} at {}", target.display())))
            }
        }
    }

    fn release_bundle(&mut self, id: &str) {
        self.ooms.remove(id);
        if let Some(bundle) = self.bundles.remove(id) {
            for m in ["rootfs", "layer", "lower"] {
                let _ = umount2(&bundle.join(m), MntFlags::MNT_DETACH);
            }
            let _ = std::fs::remove_dir_all(&bundle);
        }
    }

    pub(super) fn shutdown(&mut self) {
        let ids: Vec<String> = self.bundles.keys().cloned().collect();
        for id in ids {
            if let Err(e) = moat_container::delete::delete(&self.store, &id, true) {
                log::error(&format!("delete {id}: {e}"));
            }
            self.release_bundle(&id);
        }
    }
}

/// Where a container's root filesystem comes from.
#[derive(Clone, Copy)]
enum Root<'a> {
    /// A virtio-blk disk (one VM per container).
    Disk(&'a RootfsDisk),
    /// A directory of the shared directory (a pod VM).
    Shared(&'a SharedRootfs),
}

/// An overlay at `rootfs` whose lower layer is `lower` (a read-only disk) and whose upper layer
/// is a fresh tmpfs at `layer`: the container's writes stay in guest memory for its lifetime.
fn overlay_on(lower: &Path, layer: &Path, rootfs: &Path) -> Result<()> {
    let fail =
        |what: String| move |e: nix::errno::Errno| AgentFailure::Rootfs(format!("{what}: {e}"));
    std::fs::create_dir_all(layer).map_err(|e| AgentFailure::io("create", layer, e))?;
    mount(
        Some("tmpfs"),
        layer,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=755"),
    )
    .map_err(fail(format!("mount tmpfs at {}", layer.display())))?;
    let (upper, work) = (layer.join("upper"), layer.join("work"));
    for d in [&upper, &work] {
        std::fs::create_dir(d).map_err(|e| AgentFailure::io("create", d, e))?;
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        rootfs,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(fail(format!("mount overlay at {}", rootfs.display())))
}

/// Mount the disk with `disk`'s serial at `rootfs` (read-only when it is an overlay's lower
/// layer).
fn mount_disk(disk: &RootfsDisk, rootfs: &Path) -> Result<()> {
    let _ = std::fs::create_dir_all(rootfs);
    let dev = boot::find_disk(&disk.serial, Duration::from_secs(5))?;
    // In a clone of a template the device's page cache still holds what the template read of
    // its placeholder disk at boot (the partition scan): drop it before mounting.
    if let Ok(f) = std::fs::File::open(&dev) {
        use std::os::fd::AsFd;
        let _ = moat_sys::random::flush_block_buffers(f.as_fd());
    }
    let flags = if disk.readonly || disk.overlay {
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
    })
}
