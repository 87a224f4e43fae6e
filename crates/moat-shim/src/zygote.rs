//! The zygote: a single-threaded child forked by the shim before it starts any thread. For each
//! request it forks a worker that runs `moat_container::create` or `exec` with the container's stdio
//! descriptors on 0/1/2 and reports the result, then exits; the processes it started are
//! reparented to the shim (a child subreaper). Requests are serialised by the caller.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};

use moat_sys::fd::{recv_fds, send_fds};

#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    Create {
        root: PathBuf,
        id: String,
        bundle: PathBuf,
        console_socket: Option<PathBuf>,
    },
    Exec {
        root: PathBuf,
        id: String,
        process: String,
        console_socket: Option<PathBuf>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Ok { pid: i32 },
    Err { message: String },
}

static ZYGOTE: OnceLock<Mutex<OwnedFd>> = OnceLock::new();

/// Fork the zygote. Must be called while the process is single-threaded.
pub fn start_global() -> Result<(), String> {
    let (ours, theirs) = nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::SeqPacket,
        None,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| format!("socketpair: {e}"))?;
    match moat_sys::process::clone3(0, false).map_err(|e| format!("fork: {e}"))? {
        moat_sys::process::Forked::Child => {
            drop(ours);
            // Do not hold the shim's stdio: containerd waits for the shim's stdout to close.
            if let Ok(null) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
            {
                for fd in 0..=2 {
                    let _ = nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), fd);
                }
            }
            // Die with the shim.
            let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
            serve(theirs)
        }
        moat_sys::process::Forked::Parent { .. } => {
            drop(theirs);
            ZYGOTE
                .set(Mutex::new(ours))
                .map_err(|_| "zygote already started".to_string())
        }
    }
}

/// Send one request with the stdio descriptors; wait for the reply.
pub fn call(req: &Request, stdio: [RawFd; 3]) -> Result<i32, String> {
    let z = ZYGOTE.get().ok_or("the zygote is not running")?;
    let sock = z.lock().map_err(|_| "zygote lock poisoned")?;
    let data = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    send_fds(sock.as_fd(), &data, &stdio).map_err(|e| format!("send to zygote: {e}"))?;
    let mut buf = vec![0u8; 64 * 1024];
    let (n, _) = recv_fds(sock.as_fd(), &mut buf).map_err(|e| format!("read from zygote: {e}"))?;
    if n == 0 {
        return Err("the zygote exited".into());
    }
    match serde_json::from_slice::<Reply>(&buf[..n])
        .map_err(|e| format!("bad reply from zygote: {e}"))?
    {
        Reply::Ok { pid } => Ok(pid),
        Reply::Err { message } => Err(message),
    }
}

fn serve(sock: OwnedFd) -> ! {
    let mut buf = vec![0u8; 1024 * 1024];
    loop {
        let (n, fds) = match recv_fds(sock.as_fd(), &mut buf) {
            Ok((0, _)) | Err(_) => moat_sys::process::exit_now(0),
            Ok(x) => x,
        };
        let reply = match serde_json::from_slice::<Request>(&buf[..n]) {
            Ok(req) => run_in_worker(&sock, req, fds),
            Err(e) => Some(Reply::Err {
                message: format!("bad request: {e}"),
            }),
        };
        if let Some(r) = reply {
            let _ = send_fds(
                sock.as_fd(),
                &serde_json::to_vec(&r).unwrap_or_default(),
                &[],
            );
        }
    }
}

/// Fork a worker for `req`; the worker replies itself. Returns a reply only if the fork failed or
/// the worker died without replying.
fn run_in_worker(sock: &OwnedFd, req: Request, fds: Vec<OwnedFd>) -> Option<Reply> {
    match moat_sys::process::clone3(0, false) {
        Err(e) => Some(Reply::Err {
            message: format!("fork a worker: {e}"),
        }),
        Ok(moat_sys::process::Forked::Child) => {
            for (i, fd) in fds.iter().enumerate().take(3) {
                let _ = nix::unistd::dup2(fd.as_raw_fd(), i as i32);
            }
            drop(fds);
            let reply = match work(req) {
                Ok(pid) => Reply::Ok { pid },
                Err(message) => Reply::Err { message },
            };
            let _ = send_fds(
                sock.as_fd(),
                &serde_json::to_vec(&reply).unwrap_or_default(),
                &[],
            );
            moat_sys::process::exit_now(0)
        }
        Ok(moat_sys::process::Forked::Parent { pid, .. }) => {
            drop(fds);
            match nix::sys::wait::waitpid(pid, None) {
                Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => None,
                other => Some(Reply::Err {
                    message: format!("the create worker died: {other:?}"),
                }),
            }
        }
    }
}

fn work(req: Request) -> Result<i32, String> {
    let chain = |e: &dyn std::error::Error| {
        let mut s = e.to_string();
        let mut src = e.source();
        while let Some(c) = src {
            let t = c.to_string();
            if !s.contains(&t) {
                s.push_str(": ");
                s.push_str(&t);
            }
            src = c.source();
        }
        s
    };
    match req {
        Request::Create {
            root,
            id,
            bundle,
            console_socket,
        } => {
            let store = moat_container::Store::new(root);
            let opts = moat_container::CreateOptions {
                id: id.clone(),
                bundle,
                console_socket,
                ..Default::default()
            };
            moat_container::create(&store, &opts)
                .map(|c| c.pid)
                .map_err(|e| format!("create container {id}: {}", chain(&e)))
        }
        Request::Exec {
            root,
            id,
            process,
            console_socket,
        } => {
            let store = moat_container::Store::new(root);
            let process: oci_spec::runtime::Process =
                serde_json::from_str(&process).map_err(|e| format!("exec process spec: {e}"))?;
            let opts = moat_container::exec::ExecOptions {
                id: id.clone(),
                console_socket,
                ..Default::default()
            };
            moat_container::exec::exec(&store, &opts, process)
                .map(|p| p.as_raw())
                .map_err(|e| format!("exec in container {id}: {}", chain(&e)))
        }
    }
}
