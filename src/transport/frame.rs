//! Encoding the frames the relay sends: unmasked, unfragmented, each in one buffer of
//! exactly its size, the header written in place.
//!
//! One allocation per frame and no copy after it: [`text_frame_of`] takes the body's
//! length up front (the data path always knows it) and fills the buffer once; the result
//! becomes `Bytes` without another allocation because the buffer is exactly full.

use actix_http::ws::{OpCode, Parser};
use bytes::{Bytes, BytesMut};
use serde::Serialize;

/// Bytes of the header of an unmasked frame carrying `len` payload bytes.
pub fn header_len(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    }
}

fn put_header(out: &mut Vec<u8>, op: OpCode, len: usize) {
    out.push(0x80 | u8::from(op));
    match len {
        0..=125 => out.push(len as u8),
        126..=65535 => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
}

/// A text frame whose body is exactly `len` bytes, written by `fill`.
///
/// # Panics
/// In debug builds, if `fill` writes other than `len` bytes (a bug in the caller).
pub fn text_frame_of(len: usize, fill: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    let mut out = Vec::with_capacity(header_len(len) + len);
    put_header(&mut out, OpCode::Text, len);
    let start = out.len();
    fill(&mut out);
    debug_assert_eq!(out.len() - start, len, "frame body length");
    Bytes::from(out)
}

/// Encodes `message` as JSON in one text frame (for messages off the data path: their
/// length is not known before encoding, so this costs one more buffer than
/// [`text_frame_of`]).
pub fn text_frame<T: Serialize + ?Sized>(message: &T) -> Bytes {
    // unwrap: serialising our own protocol types to memory has no failure case (no maps with
    // non-string keys, no I/O).
    let body = serde_json::to_vec(message).unwrap();
    text_frame_of(body.len(), |out| out.extend_from_slice(&body))
}

/// A ping control frame (the relay's heartbeat).
pub fn ping_frame() -> Bytes {
    control_frame(OpCode::Ping, b"")
}

/// A pong control frame answering a peer's ping with its payload.
pub fn pong_frame(payload: &[u8]) -> Bytes {
    control_frame(OpCode::Pong, payload)
}

fn control_frame(op: OpCode, payload: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(2 + payload.len());
    Parser::write_message(&mut frame, payload, op, true, false);
    frame.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_codec::Decoder;
    use actix_http::ws::{Codec, Frame};

    fn decode(frame: &Bytes) -> Frame {
        let mut buf = BytesMut::from(&frame[..]);
        // A client-mode codec reads unmasked server frames.
        Codec::new()
            .client_mode()
            .max_size(1 << 24)
            .decode(&mut buf)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn text_frames_of_every_length_form_decode_to_the_json() {
        for len in [0usize, 10, 125, 126, 1000, 65535, 65536, 200_000] {
            let payload = "x".repeat(len);
            let frame = text_frame(&serde_json::json!({ "p": payload }));
            match decode(&frame) {
                Frame::Text(text) => {
                    let value: serde_json::Value = serde_json::from_slice(&text).unwrap();
                    assert_eq!(value["p"].as_str().unwrap().len(), len);
                }
                other => panic!("not a text frame: {other:?}"),
            }
        }
    }

    #[test]
    fn a_frame_of_known_length_is_exactly_its_size() {
        for len in [0usize, 125, 126, 65535, 65536] {
            let frame = text_frame_of(len, |out| out.resize(out.len() + len, b'a'));
            assert_eq!(frame.len(), header_len(len) + len);
            match decode(&frame) {
                Frame::Text(text) => assert_eq!(text.len(), len),
                other => panic!("not a text frame: {other:?}"),
            }
        }
    }
}
