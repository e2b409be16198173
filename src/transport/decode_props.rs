//! Properties of the reading side against what a hostile peer can send: any bytes, cut
//! anywhere. `PROPTEST_CASES` sets how many cases run (`scripts/fuzz.sh` runs many).

use std::collections::VecDeque;

use proptest::prelude::*;

use super::*;

/// The limit the properties run with: small, so frames around it are cheap to make, and
/// above the largest control frame, so a bound of limit + header + control is tight.
const LIMIT: usize = 300;
/// Longest frame header: 2 bytes, an 8-byte length, a 4-byte mask.
const MAX_HEADER: usize = 14;
/// Longest control frame payload (RFC 6455 §5.5).
const MAX_CONTROL: usize = 125;

/// One frame as a peer may write it, right or wrong.
#[derive(Debug, Clone)]
struct RawFrame {
    fin: bool,
    rsv: u8,
    opcode: u8,
    mask: Option<[u8; 4]>,
    /// Announced length form: 0 minimal, 1 the 16-bit form, 2 the 64-bit form.
    form: u8,
    payload: Vec<u8>,
    /// Announce more than is sent (the rest never comes, or is the next frame's bytes).
    extra: u64,
}

fn encode(frame: &RawFrame, out: &mut Vec<u8>) {
    out.push((u8::from(frame.fin) << 7) | (frame.rsv << 4) | frame.opcode);
    let masked = if frame.mask.is_some() { 0x80 } else { 0 };
    let len = frame.payload.len() as u64 + frame.extra;
    match frame.form {
        0 if len < 126 => out.push(masked | len as u8),
        0 | 1 if len < 65536 => {
            out.push(masked | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(masked | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
    match frame.mask {
        Some(mask) => {
            out.extend_from_slice(&mask);
            out.extend(
                frame
                    .payload
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ mask[i % 4]),
            );
        }
        None => out.extend_from_slice(&frame.payload),
    }
}

/// Frames of every kind, mostly well-formed, with lengths around [`LIMIT`].
fn raw_frame() -> impl Strategy<Value = RawFrame> {
    let opcode = prop_oneof![
        4 => Just(0x1u8), 3 => Just(0x0), 1 => Just(0x2), 2 => Just(0x9),
        1 => Just(0xA), 1 => Just(0x8), 1 => 0u8..16,
    ];
    (
        any::<bool>(),
        prop_oneof![9 => Just(0u8), 1 => 0u8..8],
        opcode,
        prop_oneof![9 => any::<[u8; 4]>().prop_map(Some), 1 => Just(None)],
        0u8..3,
        prop::collection::vec(any::<u8>(), 0..LIMIT + 40),
        prop_oneof![8 => Just(0u64), 1 => 0u64..300, 1 => any::<u64>()],
    )
        .prop_map(|(fin, rsv, opcode, mask, form, payload, extra)| RawFrame {
            fin,
            rsv,
            opcode,
            mask,
            form,
            payload,
            extra,
        })
}

/// A byte stream: frames, now and then raw garbage between them.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        9 => raw_frame().prop_map(|frame| {
            let mut out = Vec::new();
            encode(&frame, &mut out);
            out
        }),
        1 => prop::collection::vec(any::<u8>(), 0..32),
    ];
    prop::collection::vec(piece, 0..12).prop_map(|pieces| pieces.concat())
}

/// Cut points for a stream of `len` bytes, as fractions, sorted.
fn cuts() -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(0.0f64..1.0, 0..10).prop_map(|mut cuts| {
        cuts.sort_by(f64::total_cmp);
        cuts
    })
}

/// Feeds `bytes` in pieces cut at `cuts`; the events, and the most ever held between reads.
fn feed(bytes: &[u8], cuts: &[f64]) -> (Vec<String>, usize) {
    let mut reader = Reader::new(LIMIT);
    let mut ready = VecDeque::new();
    let mut at = 0;
    let mut most = 0;
    let ends = cuts.iter().map(|f| (f * bytes.len() as f64) as usize);
    for end in ends.chain([bytes.len()]) {
        let end = end.max(at);
        reader.absorb(&bytes[at..end], &mut ready);
        most = most.max(reader.buffered());
        at = end;
    }
    (
        ready.iter().map(|event| format!("{event:?}")).collect(),
        most,
    )
}

proptest! {
    #[test]
    fn any_bytes_cut_anywhere_never_panic_and_never_pile_up(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        cuts in cuts(),
    ) {
        let (_, most) = feed(&bytes, &cuts);
        prop_assert!(most <= LIMIT + MAX_HEADER + MAX_CONTROL, "held {most}");
    }

    #[test]
    fn frames_give_the_same_events_however_they_are_cut(stream in stream(), cuts in cuts()) {
        let (whole, _) = feed(&stream, &[]);
        let (cut, most) = feed(&stream, &cuts);
        prop_assert_eq!(whole, cut);
        // A message being reassembled, a control frame in the middle of it, one header:
        // never more, whatever announces what.
        prop_assert!(most <= LIMIT + MAX_HEADER + MAX_CONTROL, "held {most}");
    }

    #[test]
    fn text_messages_come_out_as_they_went_in(
        messages in prop::collection::vec((".{0,40}", 1usize..4, any::<[u8; 4]>()), 0..6),
        cuts in cuts(),
    ) {
        let mut bytes = Vec::new();
        for (text, parts, mask) in &messages {
            let chunk = text.len().div_ceil(*parts).max(1);
            let pieces: Vec<&[u8]> = text.as_bytes().chunks(chunk).collect();
            let pieces = if pieces.is_empty() { vec![&b""[..]] } else { pieces };
            for (i, piece) in pieces.iter().enumerate() {
                let frame = RawFrame {
                    fin: i + 1 == pieces.len(),
                    rsv: 0,
                    opcode: if i == 0 { 0x1 } else { 0x0 },
                    mask: Some(*mask),
                    form: 0,
                    payload: piece.to_vec(),
                    extra: 0,
                };
                encode(&frame, &mut bytes);
                // A ping between fragments is allowed and answered on its own.
                let ping = RawFrame { opcode: 0x9, fin: true, payload: b"p".to_vec(), ..frame };
                encode(&ping, &mut bytes);
            }
        }
        let (events, _) = feed(&bytes, &cuts);
        let texts: Vec<String> = events.into_iter().filter(|e| e.starts_with("Text")).collect();
        let expected: Vec<String> = messages
            .iter()
            .map(|(text, ..)| format!("{:?}", Inbound::Text(Bytes::from(text.clone()))))
            .collect();
        prop_assert_eq!(texts, expected);
    }
}
