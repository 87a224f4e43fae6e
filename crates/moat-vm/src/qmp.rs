//! A minimal QMP (QEMU Machine Protocol) client: one unix socket, newline-delimited JSON,
//! synchronous commands. Saving a template (`migrate`, `query-migrate`) and resuming a clone
//! (`migrate-incoming`) use it; nothing else in moat talks to QEMU at run time.
//!
//! Written by hand: the protocol needed here is four commands, and the QMP crates on crates.io
//! (qapi, qmp-client) are async or generate the whole schema.
//!
//! What it must never do: block without a deadline (every read has a timeout) or take an event
//! for a command's answer.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::error::{Result, VmError};

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    path: PathBuf,
}

impl Qmp {
    /// Connect to the QMP socket `path` (retrying until `timeout`: QEMU creates it while it
    /// starts), read the greeting and leave capabilities negotiation.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => {
                    return Err(VmError::io("connect to QMP socket", path)(e))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(VmError::io("set a timeout on", path))?;
        let writer = stream
            .try_clone()
            .map_err(VmError::io("clone the QMP socket", path))?;
        let mut q = Qmp {
            reader: BufReader::new(stream),
            writer,
            path: path.to_path_buf(),
        };
        let greeting = q.read()?;
        if greeting.get("QMP").is_none() {
            return Err(q.error("greeting", &greeting.to_string()));
        }
        q.execute("qmp_capabilities", None)?;
        Ok(q)
    }

    fn error(&self, command: &str, reason: &str) -> VmError {
        VmError::Qmp {
            command: command.to_string(),
            reason: reason.to_string(),
        }
    }

    fn read(&mut self) -> Result<Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err(self.error("read", "QEMU closed the QMP socket")),
            Ok(_) => serde_json::from_str(&line)
                .map_err(|e| self.error("read", &format!("{e}: {line:?}"))),
            Err(e) => Err(VmError::io("read from", self.path.clone())(e)),
        }
    }

    /// Run `command` with `arguments` and return its `return` value (events are skipped).
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(VmError::io("write to", self.path.clone()))?;
        loop {
            let v = self.read()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                let desc = e["desc"].as_str().unwrap_or("unknown error").to_string();
                return Err(self.error(command, &desc));
            }
            // An event ({"event": ...}): not an answer.
        }
    }

    /// Turn on the `x-ignore-shared` migration capability: RAM in a shared, named file is left
    /// out of the stream (it stays in the file).
    pub fn ignore_shared_ram(&mut self) -> Result<()> {
        self.execute(
            "migrate-set-capabilities",
            Some(json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]})),
        )
        .map(drop)
    }

    /// Poll `query-migrate` until the migration completes, fails or `timeout` passes.
    pub fn wait_migration(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.execute("query-migrate", None)?;
            match v["status"].as_str().unwrap_or("") {
                "completed" => return Ok(()),
                "failed" | "cancelled" => {
                    let why = v["error-desc"].as_str().unwrap_or("no reason given");
                    return Err(self.error("migrate", why));
                }
                _ if Instant::now() > deadline => {
                    return Err(self.error("migrate", "did not complete in time"))
                }
                _ => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }
}
