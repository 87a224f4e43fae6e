//! Starting a container's init or an exec'd process through the zygote, with its stdio: the
//! fifos, or a console socket whose pty master the shim keeps for a terminal.

use std::path::Path;

use crate::io::Console;
use crate::zygote::{self, Request};

use super::{Proc, Service};

impl Service {
    pub(super) fn spawn_proc(&self, id: &str, req: Request, p: &mut Proc) -> Result<i32, String> {
        let mut console = None;
        let req = if p.terminal {
            let base = Path::new(crate::io::CONSOLE_BASE);
            let c = Console::listen(base, p.stdin.clone(), p.stdout.clone())
                .map_err(|e| format!("console socket of {id} in {}: {e}", base.display()))?;
            let path = c.path.clone();
            console = Some(c);
            match req {
                Request::Create {
                    root, id, bundle, ..
                } => Request::Create {
                    root,
                    id,
                    bundle,
                    console_socket: Some(path),
                },
                Request::Exec {
                    root, id, process, ..
                } => Request::Exec {
                    root,
                    id,
                    process,
                    console_socket: Some(path),
                },
            }
        } else {
            req
        };
        let stdio = if p.terminal {
            crate::io::open_stdio("", "", "")
        } else {
            crate::io::open_stdio(&p.stdin, &p.stdout, &p.stderr)
        }
        .map_err(|e| format!("open stdio of {id}: {e}"))?;
        use std::os::fd::AsRawFd;
        let raw = [
            stdio[0].as_raw_fd(),
            stdio[1].as_raw_fd(),
            stdio[2].as_raw_fd(),
        ];
        let r = zygote::call(&req, raw);
        drop(stdio);
        match (&r, console.as_mut()) {
            (Ok(_), Some(c)) => c.received(),
            (Err(_), Some(c)) => c.abort(),
            _ => {}
        }
        p.console = console;
        r
    }
}
