//! The frame decoder on hand-made client frames.

use super::*;

/// A masked client frame.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=65535 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

fn one(decoder: &mut Decoder, input: &[u8]) -> Option<Inbound> {
    match decoder.next(input) {
        Step::Frame { consumed, event } => {
            assert_eq!(consumed, input.len());
            event
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_text_frame_of_every_length_form_is_unmasked_exactly() {
    for len in [0, 1, 7, 8, 9, 125, 126, 1000, 65535, 65536, 70_000] {
        let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
        let mut decoder = Decoder::new(1 << 20);
        match one(&mut decoder, &frame(true, 1, &payload)) {
            Some(Inbound::Text(text)) => assert_eq!(&text[..], &payload[..], "{len}"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_frame_is_incomplete_until_its_last_byte_arrives() {
    let whole = frame(true, 1, b"hello, world");
    let mut decoder = Decoder::new(1024);
    for cut in 0..whole.len() {
        assert!(
            matches!(decoder.next(&whole[..cut]), Step::Incomplete),
            "{cut}"
        );
    }
    assert!(matches!(one(&mut decoder, &whole), Some(Inbound::Text(_))));
}

#[test]
fn fragments_are_joined_and_control_frames_may_come_between() {
    let mut decoder = Decoder::new(1024);
    assert!(one(&mut decoder, &frame(false, 1, b"hel")).is_none());
    assert!(matches!(
        one(&mut decoder, &frame(true, 9, b"p")),
        Some(Inbound::Ping(_))
    ));
    assert!(one(&mut decoder, &frame(false, 0, b"lo ")).is_none());
    match one(&mut decoder, &frame(true, 0, b"you")) {
        Some(Inbound::Text(text)) => assert_eq!(&text[..], b"hello you"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_header_announcing_too_much_is_refused_before_its_payload_arrives() {
    let mut decoder = Decoder::new(1024);
    let header = &frame(true, 1, &vec![0; 70_000])[..14];
    assert!(matches!(
        decoder.next(header),
        Step::Fail(Inbound::TooLarge)
    ));
    // Fragments that add up past the limit: refused at the header that passes it.
    let mut decoder = Decoder::new(1024);
    assert!(one(&mut decoder, &frame(false, 1, &[b'a'; 600])).is_none());
    let next = &frame(true, 0, &[b'a'; 600])[..8];
    assert!(matches!(decoder.next(next), Step::Fail(Inbound::TooLarge)));
    // A 2^62 length.
    let mut huge = vec![0x81, 0x80 | 127];
    huge.extend_from_slice(&(1u64 << 62).to_be_bytes());
    huge.extend_from_slice(&[1, 2, 3, 4]);
    assert!(matches!(
        Decoder::new(1024).next(&huge),
        Step::Fail(Inbound::TooLarge)
    ));
}

#[test]
fn broken_framing_is_a_protocol_error() {
    let fails = |input: &[u8]| {
        matches!(
            Decoder::new(1024).next(input),
            Step::Fail(Inbound::Protocol(_))
        )
    };
    // Unmasked.
    assert!(fails(&[0x81, 0x01, b'x']));
    // Reserved bits.
    let mut reserved = frame(true, 1, b"x");
    reserved[0] |= 0x40;
    assert!(fails(&reserved));
    // A fragmented or long control frame.
    assert!(fails(&frame(false, 9, b"x")));
    assert!(fails(&frame(true, 9, &[0; 126])));
    // An unknown opcode; a continuation with nothing to continue.
    assert!(fails(&frame(true, 3, b"x")));
    assert!(fails(&frame(true, 0, b"x")));
    // A new message while one is in progress.
    let mut decoder = Decoder::new(1024);
    assert!(one(&mut decoder, &frame(false, 1, b"a")).is_none());
    assert!(matches!(
        decoder.next(&frame(true, 1, b"b")),
        Step::Fail(Inbound::Protocol(_))
    ));
}

#[test]
fn text_that_is_not_utf8_is_refused_and_close_frames_carry_their_reason() {
    assert!(matches!(
        Decoder::new(1024).next(&frame(true, 1, &[0xff, 0xfe])),
        Step::Fail(Inbound::InvalidUtf8)
    ));
    let mut close = 1000u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"bye");
    match one(&mut Decoder::new(1024), &frame(true, 8, &close)) {
        Some(Inbound::Close(Some(reason))) => {
            assert_eq!(reason.code, CloseCode::Normal);
            assert_eq!(reason.description.as_deref(), Some("bye"));
        }
        other => panic!("{other:?}"),
    }
}
