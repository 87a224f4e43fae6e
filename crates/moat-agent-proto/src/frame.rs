//! Framing: `[len: u32 little-endian][len bytes of JSON]`. [`Decoder`] is push-based so it works
//! with any byte source; it never holds more than one frame and never panics on hostile input.
//! A frame longer than [`MAX_FRAME`] is skipped (reported once) so the stream stays in sync; a
//! frame whose JSON does not decode is reported with its request id when one can be read.

use std::collections::VecDeque;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;
/// Largest accepted payload (1 MiB).
pub const MAX_FRAME: usize = 1 << 20;

/// Why a frame was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame of {len} bytes exceeds the maximum of {MAX_FRAME}; skipped")]
    TooLarge { len: usize },
    #[error("malformed message: {message}")]
    Malformed {
        /// The request id, if the frame was JSON with a numeric `id`.
        id: Option<u64>,
        message: String,
    },
}

/// Why a message could not be framed.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("encoded message of {len} bytes exceeds the maximum of {MAX_FRAME}")]
    TooLarge { len: usize },
    #[error("serialize message: {0}")]
    Json(#[from] serde_json::Error),
}

/// Encode one message as a frame.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, EncodeError> {
    let body = serde_json::to_vec(msg)?;
    if body.len() > MAX_FRAME {
        return Err(EncodeError::TooLarge { len: body.len() });
    }
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    // MAX_FRAME fits in u32, checked above.
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Incremental decoder of frames carrying `T`.
#[derive(Debug)]
pub struct Decoder<T> {
    buf: VecDeque<u8>,
    /// Bytes of an oversized frame still to drop.
    discard: usize,
    _t: PhantomData<fn() -> T>,
}

impl<T> Default for Decoder<T> {
    fn default() -> Self {
        Decoder {
            buf: VecDeque::new(),
            discard: 0,
            _t: PhantomData,
        }
    }
}

impl<T: DeserializeOwned> Decoder<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Append bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        let skip = self.discard.min(bytes.len());
        self.discard -= skip;
        self.buf.extend(&bytes[skip..]);
    }

    /// True when no partial frame is buffered.
    pub fn is_idle(&self) -> bool {
        self.buf.is_empty() && self.discard == 0
    }

    /// The next complete message, `None` when more bytes are needed.
    pub fn next_message(&mut self) -> Option<Result<T, DecodeError>> {
        if self.discard > 0 {
            let skip = self.discard.min(self.buf.len());
            self.buf.drain(..skip);
            self.discard -= skip;
            if self.discard > 0 {
                return None;
            }
        }
        if self.buf.len() < HEADER_LEN {
            return None;
        }
        let mut hdr = [0u8; HEADER_LEN];
        for (i, b) in self.buf.iter().take(HEADER_LEN).enumerate() {
            hdr[i] = *b;
        }
        let len = u32::from_le_bytes(hdr) as usize;
        if len > MAX_FRAME {
            self.buf.drain(..HEADER_LEN);
            let skip = len.min(self.buf.len());
            self.buf.drain(..skip);
            self.discard = len - skip;
            return Some(Err(DecodeError::TooLarge { len }));
        }
        if self.buf.len() < HEADER_LEN + len {
            return None;
        }
        self.buf.drain(..HEADER_LEN);
        let body: Vec<u8> = self.buf.drain(..len).collect();
        Some(
            serde_json::from_slice::<T>(&body).map_err(|e| DecodeError::Malformed {
                id: request_id(&body),
                message: e.to_string(),
            }),
        )
    }
}

/// The `id` of a JSON object frame, to address the error reply to a malformed request.
fn request_id(body: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: u64,
    }
    serde_json::from_slice::<IdOnly>(body).ok().map(|v| v.id)
}

#[cfg(test)]
mod tests;
