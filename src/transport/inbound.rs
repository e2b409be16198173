//! Incoming WebSocket frames, decoded from the request payload and reassembled.
//!
//! Fragmented (continuation) messages are joined here, so actors only ever see whole
//! messages, and the size limit applies to the whole message, not to each fragment.
//!
//! Memory per connection is bounded by `max_message_bytes` (plus one read chunk): a frame
//! whose header announces more than the limit allows — alone, or with the fragments before
//! it — is refused as soon as its header has arrived. actix-http's codec would instead
//! buffer the whole announced payload before comparing it with its limit.

use std::pin::Pin;
use std::task::{Context, Poll};

use actix_codec::Decoder;
use actix_http::ws::{CloseReason, Codec, Frame, Item, ProtocolError};
use actix_web::web::Payload;
use bytes::{Bytes, BytesMut};
use futures_util::Stream;

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

/// Reads [`Inbound`] events from an upgraded request's payload. Ends (`None`) when the
/// socket is lost without a close frame.
pub struct InboundStream {
    payload: Payload,
    codec: Codec,
    /// Bytes read from the socket but not yet decoded into a frame.
    buf: BytesMut,
    /// The fragments of a message so far, and whether it is text.
    partial: Option<(BytesMut, bool)>,
    max_message_bytes: usize,
    done: bool,
}

impl InboundStream {
    /// Decodes `payload`, refusing frames and messages over `max_message_bytes`.
    pub fn new(payload: Payload, max_message_bytes: usize) -> Self {
        Self {
            payload,
            codec: Codec::new().max_size(max_message_bytes),
            buf: BytesMut::new(),
            partial: None,
            max_message_bytes,
            done: false,
        }
    }

    /// Turns one decoded frame into an event, or `None` when it was a non-final fragment.
    fn on_frame(&mut self, frame: Frame) -> Option<Inbound> {
        match frame {
            Frame::Text(text) => Some(self.text(text)),
            Frame::Binary(_) => Some(Inbound::Binary),
            Frame::Ping(payload) => Some(Inbound::Ping(payload)),
            Frame::Pong(_) => Some(Inbound::Pong),
            Frame::Close(reason) => {
                self.done = true;
                Some(Inbound::Close(reason))
            }
            Frame::Continuation(item) => self.on_fragment(item),
        }
    }

    fn on_fragment(&mut self, item: Item) -> Option<Inbound> {
        let (chunk, last) = match item {
            Item::FirstText(chunk) => {
                self.partial = Some((BytesMut::new(), true));
                (chunk, false)
            }
            Item::FirstBinary(chunk) => {
                self.partial = Some((BytesMut::new(), false));
                (chunk, false)
            }
            Item::Continue(chunk) => (chunk, false),
            Item::Last(chunk) => (chunk, true),
        };
        // The codec refuses a continuation without a start, so `partial` is set here.
        let (so_far, _) = self.partial.as_mut()?;
        if so_far.len() + chunk.len() > self.max_message_bytes {
            self.done = true;
            self.partial = None;
            return Some(Inbound::TooLarge);
        }
        so_far.extend_from_slice(&chunk);
        if !last {
            return None;
        }
        let (whole, is_text) = self.partial.take()?;
        Some(if is_text {
            self.text(whole.freeze())
        } else {
            Inbound::Binary
        })
    }

    /// A whole text message, once its UTF-8 is checked: everything after relies on it being
    /// text (a payload forwarded as it came must not break the reader's decoder).
    fn text(&mut self, text: Bytes) -> Inbound {
        if std::str::from_utf8(&text).is_ok() {
            Inbound::Text(text)
        } else {
            self.done = true;
            Inbound::InvalidUtf8
        }
    }

    /// Whether the frame whose header is at the front of `buf` would take the message past
    /// `max_message_bytes`; false until the whole header has arrived.
    fn announces_too_much(&self) -> bool {
        let Some((opcode, length)) = announced(&self.buf) else {
            return false;
        };
        // Only a continuation adds to a message in progress; control frames stand alone.
        let so_far = match (opcode, &self.partial) {
            (CONTINUATION, Some((so_far, _))) => so_far.len(),
            _ => 0,
        };
        length.saturating_add(so_far as u64) > self.max_message_bytes as u64
    }
}

/// The opcode of a continuation frame (RFC 6455 §5.2).
const CONTINUATION: u8 = 0x0;

/// The opcode and the payload length a frame header at the front of `buf` announces, once
/// enough of it has arrived (RFC 6455 §5.2: 7-bit length, or 126 + 16-bit, or 127 + 64-bit).
fn announced(buf: &[u8]) -> Option<(u8, u64)> {
    let (first, second) = (*buf.first()?, *buf.get(1)?);
    let length = match second & 0x7F {
        126 => u64::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)),
        127 => u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?),
        short => u64::from(short),
    };
    Some((first & 0x0F, length))
}

impl Stream for InboundStream {
    type Item = Inbound;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Inbound>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if this.announces_too_much() {
                this.done = true;
                this.partial = None;
                this.buf = BytesMut::new();
                return Poll::Ready(Some(Inbound::TooLarge));
            }
            match this.codec.decode(&mut this.buf) {
                Ok(Some(frame)) => {
                    if let Some(event) = this.on_frame(frame) {
                        return Poll::Ready(Some(event));
                    }
                }
                Ok(None) => match Pin::new(&mut this.payload).poll_next(cx) {
                    Poll::Ready(Some(Ok(chunk))) => this.buf.extend_from_slice(&chunk),
                    Poll::Ready(Some(Err(_)) | None) => {
                        this.done = true;
                        return Poll::Ready(None);
                    }
                    Poll::Pending => return Poll::Pending,
                },
                Err(ProtocolError::Overflow) => {
                    this.done = true;
                    return Poll::Ready(Some(Inbound::TooLarge));
                }
                Err(err) => {
                    this.done = true;
                    return Poll::Ready(Some(Inbound::Protocol(err)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::announced;

    #[test]
    fn a_header_announces_its_length_in_each_of_its_three_forms() {
        assert_eq!(announced(&[0x81]), None);
        assert_eq!(announced(&[0x81, 0x80 | 5]), Some((1, 5)));
        assert_eq!(announced(&[0x82, 0x80 | 126, 0x01]), None);
        assert_eq!(announced(&[0x82, 0x80 | 126, 0x01, 0x00]), Some((2, 256)));
        let mut long = vec![0x00, 0x80 | 127];
        long.extend_from_slice(&(1u64 << 62).to_be_bytes());
        assert_eq!(announced(&long[..9]), None);
        assert_eq!(announced(&long), Some((0, 1 << 62)));
    }
}
