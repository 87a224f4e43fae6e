//! One agent port: a virtio-serial port whose host end is one unix socket. The host's commands
//! are separate processes, each one connection; a VM has several ports so that a command that
//! stays attached (a foreground `run` or `exec`) does not lock the others out.
//!
//! The port is non-blocking and its state is probed by reading it (0: no host connected,
//! EAGAIN: connected and quiet). Every new connection gets a `Ready`; what would be sent while no
//! host is connected is dropped, and unsent bytes are dropped when the host goes, so a new
//! connection never starts mid-frame.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use moat_agent_proto::{encode, DecodeError, Decoder, GuestMessage, HostMessage, PROTOCOL_VERSION};

use crate::error::{AgentFailure, Result};
use crate::log;

pub struct Conn {
    /// Non-blocking: a read returns 0 while no host is connected, EAGAIN while one is connected
    /// and quiet; a write returns EAGAIN while no host is connected.
    pub port: File,
    connected: bool,
    /// Encoded frames not yet written.
    out: Vec<u8>,
    dec: Decoder<HostMessage>,
}

/// What one read of the port brought.
#[derive(Default)]
pub struct Received {
    /// The host went away.
    pub disconnected: bool,
    pub messages: Vec<std::result::Result<HostMessage, DecodeError>>,
    /// The port failed (not a disconnect).
    pub error: Option<std::io::Error>,
}

impl Conn {
    pub fn open(path: &Path) -> Result<Conn> {
        use std::os::unix::fs::OpenOptionsExt;
        let port = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(path)
            .map_err(|e| AgentFailure::io("open port", path, e))?;
        Ok(Conn {
            port,
            connected: false,
            out: Vec::new(),
            dec: Decoder::new(),
        })
    }

    pub fn connected(&self) -> bool {
        self.connected
    }

    /// Bytes queued for the host.
    pub fn queued(&self) -> usize {
        self.out.len()
    }

    /// Queue `msg` for the host; dropped while no host is connected.
    pub fn send(&mut self, msg: &GuestMessage) {
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
    pub fn flush(&mut self) {
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

    fn on_connected(&mut self, kernel_release: &str) {
        if !self.connected {
            self.connected = true;
            self.send(&GuestMessage::Ready {
                version: PROTOCOL_VERSION,
                kernel_release: kernel_release.into(),
            });
        }
    }

    /// Read what the host sent (or notice it came or went).
    pub fn receive(&mut self, buf: &mut [u8], kernel_release: &str) -> Received {
        let mut r = Received::default();
        match self.port.read(buf) {
            // No data and no host.
            Ok(0) => {
                if self.connected {
                    self.connected = false;
                    self.out.clear();
                    self.dec = Decoder::new();
                    r.disconnected = true;
                }
            }
            Ok(n) => {
                self.on_connected(kernel_release);
                self.dec.push(&buf[..n]);
                while let Some(m) = self.dec.next_message() {
                    r.messages.push(m);
                }
            }
            // A host is connected and quiet.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                self.on_connected(kernel_release)
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => r.error = Some(e),
        }
        r
    }
}
