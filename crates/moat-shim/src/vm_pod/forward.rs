//! Port forwarding into a pod VM (CRI `PortForward`, `kubectl port-forward`). containerd 1.6
//! serves it by dialling `localhost:PORT` inside the pod's network namespace; a VM pod's
//! processes listen in the guest, whose only link to that namespace is the tap on its `eth0`.
//! So the shim listens on one port of the namespace's loopback, an iptables `REDIRECT` (nat
//! `OUTPUT`: connections made in the namespace itself) sends every other TCP connection to
//! `127.0.0.1` there, the port asked for comes back from `SO_ORIGINAL_DST`, and the agent opens
//! that port on the guest's loopback ([`Request::Dial`]): the connection's bytes travel as that
//! pseudo-process's stdin (from here, paced like a process's) and output (to here).
//!
//! What it must never do: keep the namespace alive after the pod (the listener is shut down at
//! power-off), or forward anything but connections to the namespace's own loopback.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use moat_agent_proto::{Request, FORWARD_ID};
use moat_vm::VmError;

use super::error::{Result, VmPodError};
use super::link::Link;

/// The pod's forwarder: its listener and the connections it relays (by stream id).
pub struct Forwarder {
    listener: TcpListener,
    stopped: AtomicBool,
    conns: Mutex<HashMap<String, TcpStream>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Forwarder {
    /// Listen in the network namespace `netns` and redirect its loopback's TCP connections
    /// there; relay each through `link`.
    pub fn start(netns: &Path, link: Arc<Link>) -> Result<Arc<Forwarder>> {
        // iptables runs as a child: under the shim's lock against its reaper.
        let listener = super::with_net_commands(|| {
            moat_vm::net::in_netns(Some(netns), || {
                let l =
                    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|source| VmError::Io {
                        what: "listen on",
                        path: "127.0.0.1 of the pod's network namespace".into(),
                        source,
                    })?;
                let port = l
                    .local_addr()
                    .map_err(|source| VmError::Io {
                        what: "read the address of",
                        path: "the port-forward listener".into(),
                        source,
                    })?
                    .port()
                    .to_string();
                let args = [
                    "-w",
                    "-t",
                    "nat",
                    "-A",
                    "OUTPUT",
                    "-p",
                    "tcp",
                    "-d",
                    "127.0.0.1/32",
                    "!",
                    "--dport",
                    &port,
                    "-j",
                    "REDIRECT",
                    "--to-ports",
                    &port,
                ];
                moat_vm::net::run("iptables", &args)?;
                Ok(l)
            })
        })
        .map_err(VmPodError::vm(format!(
            "forward ports of the network namespace {}",
            netns.display()
        )))?;
        let f = Arc::new(Forwarder {
            listener,
            stopped: AtomicBool::new(false),
            conns: Mutex::default(),
        });
        let me = f.clone();
        std::thread::spawn(move || me.accept_loop(link));
        Ok(f)
    }

    fn accept_loop(&self, link: Arc<Link>) {
        let mut n = 0u64;
        for conn in self.listener.incoming() {
            if self.stopped.load(Ordering::SeqCst) {
                break;
            }
            let Ok(conn) = conn else { continue };
            let Some(port) = original_port(&conn) else {
                continue;
            };
            n += 1;
            let stream = n.to_string();
            let Ok(out) = conn.try_clone() else { continue };
            // Known before the dial: the guest's first bytes may follow its answer at once.
            lock(&self.conns).insert(stream.clone(), out);
            match link.done(Request::Dial {
                stream: stream.clone(),
                port,
            }) {
                Ok(()) => {
                    if let Ok(input) = conn.try_clone() {
                        super::stdio::forward(
                            link.clone(),
                            FORWARD_ID.into(),
                            Some(stream),
                            File::from(OwnedFd::from(input)),
                        );
                    }
                }
                Err(e) => {
                    log::warn!("port-forward to port {port} in the pod VM: {e}");
                    lock(&self.conns).remove(&stream);
                }
            }
        }
    }

    /// Bytes the guest side of connection `stream` sent.
    pub fn output(&self, stream: &str, data: &[u8]) {
        let c = lock(&self.conns)
            .get(stream)
            .and_then(|c| c.try_clone().ok());
        if let Some(mut c) = c {
            let _ = c.write_all(data);
        }
    }

    /// The guest side of connection `stream` closed: so does our sending side.
    pub fn closed(&self, stream: &str) {
        if let Some(c) = lock(&self.conns).remove(stream) {
            let _ = c.shutdown(Shutdown::Write);
        }
    }

    /// Stop accepting and close every connection (the pod is going).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        // Wakes the accept (EINVAL), after which the loop sees `stopped`.
        let _ =
            nix::sys::socket::shutdown(self.listener.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        for (_, c) in lock(&self.conns).drain() {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

/// The port a redirected connection was made to (`SO_ORIGINAL_DST`).
fn original_port(conn: &TcpStream) -> Option<u16> {
    let dst = nix::sys::socket::getsockopt(conn, nix::sys::socket::sockopt::OriginalDst).ok()?;
    Some(u16::from_be(dst.sin_port))
}
