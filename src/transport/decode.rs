//! Decoding what a WebSocket client sends (RFC 6455 §5), straight from the bytes read:
//! each frame's payload is unmasked into a buffer of exactly its size, the one copy a
//! message costs; fragments are joined; limits are enforced at the frame header.
//!
//! Memory is bounded by `max_message_bytes`: a frame whose header announces more than the
//! limit allows — alone, or with the fragments before it — is refused as soon as its header
//! has arrived, before any of its payload is kept.

use actix_http::ws::{CloseCode, CloseReason, ProtocolError};
use bytes::Bytes;

/// One whole message or event read from a peer.
#[derive(Debug)]
pub enum Inbound {
    /// A complete text message, valid UTF-8.
    Text(Bytes),
    /// A complete binary message: not part of the protocol.
    Binary,
    /// A ping control frame, to be answered with its payload.
    Ping(Bytes),
    /// A pong control frame: proof of life, nothing to do.
    Pong,
    /// The peer sent a close frame: it is leaving on purpose.
    Close(Option<CloseReason>),
    /// A message (or a frame header, or a fragment so far) passed the size limit.
    TooLarge,
    /// A text message that is not valid UTF-8 (RFC 6455 §8.1: close with 1007).
    InvalidUtf8,
    /// The peer broke WebSocket framing; the connection cannot go on.
    Protocol(ProtocolError),
}

/// What [`Decoder::next`] found at the front of its input.
#[derive(Debug)]
pub enum Step {
    /// Not a whole frame yet: read more.
    Incomplete,
    /// One frame of `consumed` bytes; `event` is `None` for a fragment that does not end
    /// its message.
    Frame {
        /// Bytes of the input the frame took.
        consumed: usize,
        /// What it means, if anything yet.
        event: Option<Inbound>,
    },
    /// The connection cannot go on (too large, broken framing, bad UTF-8): this is the
    /// last event.
    Fail(Inbound),
}

/// Decodes the frames of one connection.
#[derive(Debug)]
pub struct Decoder {
    max_message_bytes: usize,
    /// The fragments of a message so far, and whether it is text.
    partial: Option<(Vec<u8>, bool)>,
}

impl Decoder {
    /// A decoder refusing messages over `max_message_bytes`.
    pub fn new(max_message_bytes: usize) -> Self {
        Self {
            max_message_bytes,
            partial: None,
        }
    }

    /// Decodes the frame at the front of `input`.
    pub fn next(&mut self, input: &[u8]) -> Step {
        let Some(header) = Header::parse(input) else {
            return Step::Incomplete;
        };
        if let Err(event) = self.check(&header) {
            return Step::Fail(event);
        }
        // The length is within `max_message_bytes`, so it fits a `usize`.
        let end = header.size + header.length as usize;
        let Some(payload) = input.get(header.size..end) else {
            return Step::Incomplete;
        };
        let event = match self.frame(&header, payload) {
            Ok(event) => event,
            Err(event) => return Step::Fail(event),
        };
        Step::Frame {
            consumed: end,
            event,
        }
    }

    /// Refuses a frame by its header alone.
    fn check(&self, header: &Header) -> Result<(), Inbound> {
        let protocol = |err| Err(Inbound::Protocol(err));
        if header.reserved {
            return protocol(ProtocolError::BadOpCode);
        }
        if !header.masked {
            return protocol(ProtocolError::UnmaskedFrame);
        }
        let control = header.opcode >= 0x8;
        if control && (!header.fin || header.length > 125) {
            return protocol(ProtocolError::InvalidLength(header.length as usize));
        }
        // A frame that can only be refused — an unknown opcode, a new message while one is
        // being reassembled — is refused at its header, so its payload is never held beside
        // the fragments so far (which let a peer hold about twice the limit; found by the
        // property tests in `decode_props.rs`).
        if !matches!(header.opcode, 0x0..=0x2 | 0x8..=0xA) {
            return protocol(ProtocolError::InvalidOpcode(header.opcode));
        }
        if matches!(header.opcode, 0x1 | 0x2) && self.partial.is_some() {
            return protocol(ProtocolError::ContinuationStarted);
        }
        // Only a continuation adds to a message in progress; control frames stand alone.
        let so_far = match (header.opcode, &self.partial) {
            (0x0, Some((so_far, _))) => so_far.len() as u64,
            _ => 0,
        };
        if header.length.saturating_add(so_far) > self.max_message_bytes as u64 {
            return Err(Inbound::TooLarge);
        }
        Ok(())
    }

    /// What a whole frame means.
    fn frame(&mut self, header: &Header, masked: &[u8]) -> Result<Option<Inbound>, Inbound> {
        let protocol = |err| Err(Inbound::Protocol(err));
        let payload = unmask(masked, header.mask);
        match header.opcode {
            0x1 | 0x2 if self.partial.is_some() => protocol(ProtocolError::ContinuationStarted),
            0x1 | 0x2 if !header.fin => {
                self.partial = Some((payload, header.opcode == 0x1));
                Ok(None)
            }
            0x1 => text(payload).map(Some),
            0x2 => Ok(Some(Inbound::Binary)),
            0x0 => {
                let Some((so_far, _)) = self.partial.as_mut() else {
                    return protocol(ProtocolError::ContinuationNotStarted);
                };
                so_far.extend_from_slice(&payload);
                if !header.fin {
                    return Ok(None);
                }
                match self.partial.take() {
                    Some((whole, true)) => text(whole).map(Some),
                    _ => Ok(Some(Inbound::Binary)),
                }
            }
            0x8 => Ok(Some(Inbound::Close(close_reason(&payload)))),
            0x9 => Ok(Some(Inbound::Ping(Bytes::from(payload)))),
            0xA => Ok(Some(Inbound::Pong)),
            other => protocol(ProtocolError::InvalidOpcode(other)),
        }
    }
}

/// The reading half's state between reads: the decoder, and the start of a frame whose
/// end has not arrived. Plain state with no socket, so what a peer can make it hold is
/// tested directly (`decode_props.rs`).
#[derive(Debug)]
pub struct Reader {
    decoder: Decoder,
    /// The start of a frame whose end has not arrived (empty, holding nothing, when idle).
    pending: Vec<u8>,
    /// A close frame or a fatal event was decoded: nothing after it is read.
    done: bool,
}

impl Reader {
    /// A reader refusing messages over `max_message_bytes`.
    pub fn new(max_message_bytes: usize) -> Self {
        Self {
            decoder: Decoder::new(max_message_bytes),
            pending: Vec::new(),
            done: false,
        }
    }

    /// Whether the last event was decoded (a close, or a fatal one).
    pub fn done(&self) -> bool {
        self.done
    }

    /// Bytes held between reads: the cut frame, and the fragments of a message so far.
    #[cfg(test)]
    pub fn buffered(&self) -> usize {
        self.pending.len()
            + self
                .decoder
                .partial
                .as_ref()
                .map_or(0, |(so_far, _)| so_far.len())
    }

    /// Decodes `bytes` (after what is pending), queuing every event they complete on
    /// `ready`. Frames are decoded straight from `bytes`; only a frame cut by the end of a
    /// read is copied aside until the rest arrives.
    pub fn absorb(&mut self, bytes: &[u8], ready: &mut std::collections::VecDeque<Inbound>) {
        let joined;
        let input: &[u8] = if self.pending.is_empty() {
            bytes
        } else {
            let mut pending = std::mem::take(&mut self.pending);
            pending.extend_from_slice(bytes);
            joined = pending;
            &joined
        };
        let mut at = 0;
        while !self.done {
            match self.decoder.next(&input[at..]) {
                Step::Incomplete => break,
                Step::Frame { consumed, event } => {
                    at += consumed;
                    if let Some(event) = event {
                        self.done = matches!(event, Inbound::Close(_));
                        ready.push_back(event);
                    }
                }
                Step::Fail(event) => {
                    self.done = true;
                    ready.push_back(event);
                }
            }
        }
        if !self.done && at < input.len() {
            self.pending = input[at..].to_vec();
        }
    }
}

/// A whole text message, once its UTF-8 is checked: everything after relies on it being
/// text (a payload forwarded as it came must not break the reader's decoder).
fn text(payload: Vec<u8>) -> Result<Inbound, Inbound> {
    match std::str::from_utf8(&payload) {
        Ok(_) => Ok(Inbound::Text(Bytes::from(payload))),
        Err(_) => Err(Inbound::InvalidUtf8),
    }
}

fn close_reason(payload: &[u8]) -> Option<CloseReason> {
    let code = u16::from_be_bytes(payload.get(..2)?.try_into().ok()?);
    let description = std::str::from_utf8(&payload[2..]).ok().map(str::to_owned);
    Some(CloseReason {
        code: CloseCode::from(code),
        description: description.filter(|d| !d.is_empty()),
    })
}

/// A frame header (RFC 6455 §5.2).
#[derive(Debug)]
struct Header {
    fin: bool,
    reserved: bool,
    opcode: u8,
    masked: bool,
    length: u64,
    mask: [u8; 4],
    /// Bytes of the header.
    size: usize,
}

impl Header {
    /// The header at the front of `input`, once all of it has arrived.
    fn parse(input: &[u8]) -> Option<Self> {
        let (first, second) = (*input.first()?, *input.get(1)?);
        let (length, mut size) = match second & 0x7F {
            126 => (
                u64::from(u16::from_be_bytes(input.get(2..4)?.try_into().ok()?)),
                4,
            ),
            127 => (u64::from_be_bytes(input.get(2..10)?.try_into().ok()?), 10),
            short => (u64::from(short), 2),
        };
        let masked = second & 0x80 != 0;
        let mut mask = [0; 4];
        if masked {
            mask.copy_from_slice(input.get(size..size + 4)?);
            size += 4;
        }
        Some(Self {
            fin: first & 0x80 != 0,
            reserved: first & 0x70 != 0,
            opcode: first & 0x0F,
            masked,
            length,
            mask,
            size,
        })
    }
}

/// The payload, unmasked, in a buffer of exactly its size. Eight bytes at a time.
fn unmask(masked: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(masked.len());
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = masked.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        out.extend_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    let done = masked.len() - chunks.remainder().len();
    out.extend(
        chunks
            .remainder()
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[(done + i) % 4]),
    );
    out
}

#[cfg(test)]
#[path = "decode_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "decode_props.rs"]
mod props;
