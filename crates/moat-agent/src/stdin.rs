//! Stdin forwarding: the agent's write end of a process's stdin pipe, the bytes the host sent
//! that the pipe has not taken yet, and the request to answer once it has. The host sends the
//! next chunk only after that answer, so at most one chunk per process is buffered here.

use std::fs::File;
use std::io::Write;

/// The stdin of one container process, as the agent feeds it.
pub struct StdinPipe {
    pub file: File,
    buf: Vec<u8>,
    /// The `Stdin` request (connection, request id) answered once `buf` is empty.
    waiting: Option<(usize, u64)>,
    /// Close once `buf` is empty (the host sent `CloseStdin`).
    close: bool,
}

/// What a write turn achieved.
pub enum Pumped {
    /// Bytes remain (the pipe is full).
    Pending,
    /// Everything was written; answer this request (connection, id), if any.
    Drained(Option<(usize, u64)>),
}

impl Drop for StdinPipe {
    /// A socket's sending side is shut down (its receiving side may live on, a forwarded
    /// connection's); a pipe or a terminal is just closed (ENOTSOCK here).
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        let _ =
            nix::sys::socket::shutdown(self.file.as_raw_fd(), nix::sys::socket::Shutdown::Write);
    }
}

impl StdinPipe {
    pub fn new(file: File) -> StdinPipe {
        StdinPipe {
            file,
            buf: Vec::new(),
            waiting: None,
            close: false,
        }
    }

    /// A chunk is still being written.
    pub fn busy(&self) -> bool {
        self.waiting.is_some()
    }

    pub fn has_pending(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Take the bytes of request `id` (connection, request id).
    pub fn push(&mut self, id: (usize, u64), data: Vec<u8>) {
        self.buf.extend(data);
        self.waiting = Some(id);
    }

    /// Close the pipe once everything queued is written.
    pub fn close_when_drained(&mut self) {
        self.close = true;
    }

    /// The pipe should be dropped now (closed, and nothing left to write).
    pub fn done(&self) -> bool {
        self.close && self.buf.is_empty()
    }

    /// The request waiting for an answer, taken (for an error answer).
    pub fn take_waiting(&mut self) -> Option<(usize, u64)> {
        self.waiting.take()
    }

    /// Write what the (non-blocking) pipe takes now.
    pub fn pump(&mut self) -> std::io::Result<Pumped> {
        while !self.buf.is_empty() {
            match self.file.write(&self.buf) {
                Ok(n) => {
                    self.buf.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(Pumped::Pending),
                Err(e) => return Err(e),
            }
        }
        Ok(Pumped::Drained(self.waiting.take()))
    }
}
