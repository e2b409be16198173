//! Incoming WebSocket frames, decoded from the request payload and reassembled.
//!
//! Fragmented (continuation) messages are joined here, so actors only ever see whole
//! messages, and the size limit applies to the whole message, not to each fragment.

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
    /// A complete text message (its UTF-8 is checked by the JSON parser).
    Text(Bytes),
    /// A complete binary message: not part of the protocol.
    Binary,
    /// A ping control frame, to be answered with its payload.
    Ping(Bytes),
    /// A pong control frame: proof of life, nothing to do.
    Pong,
    /// The peer sent a close frame: it is leaving on purpose.
    Close(Option<CloseReason>),
    /// A message (or a fragment so far) passed the size limit.
    TooLarge,
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
            Frame::Text(text) => Some(Inbound::Text(text)),
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
            Inbound::Text(whole.freeze())
        } else {
            Inbound::Binary
        })
    }
}

impl Stream for InboundStream {
    type Item = Inbound;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Inbound>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
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
