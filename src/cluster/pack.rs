//! Several envelopes for one channel in one published message: under load the publishing
//! task packs each run of envelopes bound for the same channel, so Redis and both nodes'
//! clients handle one `PUBLISH` (and one delivery) per pack instead of one per envelope.
//!
//! The wire form is [`MARK`], then each envelope as a 4-byte big-endian length and its own
//! wire form ([`Envelope::encode`]). A lone envelope is published as it always was, so
//! packs only appear when several envelopes wait at once. [`MARK`] is never the first byte
//! of an envelope (a node id) nor of UTF-8 text, so a reader tells the two apart by it, and
//! the Redis client gives up its UTF-8 check of a pack at the first byte.

use std::ops::Range;

use bytes::Bytes;

use super::envelope::Envelope;
use super::outbox::Outgoing;

/// The first byte of a pack.
pub(super) const MARK: u8 = 0xFF;

/// The most bytes a pack takes on the wire: packs stay small next to Redis's 512 MB cap
/// on a value, and a lost one loses little. An envelope bigger than this goes alone.
pub(super) const MAX_PACK_BYTES: usize = 64 * 1024;

/// Bytes an envelope of `encoded_len` adds to a pack.
pub(super) fn packed_len(encoded_len: usize) -> usize {
    4 + encoded_len
}

/// How `batch` is published, in order: each run of envelopes bound for the same channel
/// as one message, cut where it would pass [`MAX_PACK_BYTES`]. A run of one is a lone
/// envelope. Keeping the batch's order across channels too keeps every reader's order
/// what it was with one message per envelope.
pub(super) fn runs(batch: &[Outgoing]) -> Vec<Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    let mut size = 1;
    for (at, item) in batch.iter().enumerate() {
        let len = packed_len(item.size());
        let same = at > start && item.channel == batch[start].channel;
        if !same || size + len > MAX_PACK_BYTES {
            if at > start {
                runs.push(start..at);
            }
            start = at;
            size = 1;
        }
        size += len;
    }
    if start < batch.len() {
        runs.push(start..batch.len());
    }
    runs
}

/// The message publishing `run` of envelopes (one of [`runs`]): a lone envelope's wire
/// form, or a pack.
pub(super) fn wire_of(run: &[Outgoing]) -> Bytes {
    match run {
        [one] => one.envelope.encode(),
        _ => {
            let size = run.iter().map(|item| packed_len(item.size())).sum();
            pack(run.iter().map(|item| &item.envelope), size)
        }
    }
}

/// The wire form of a pack of `envelopes` (whose packed lengths sum to `size` or less,
/// without the mark).
pub(super) fn pack<'a>(envelopes: impl IntoIterator<Item = &'a Envelope>, size: usize) -> Bytes {
    let mut out = Vec::with_capacity(1 + size);
    out.push(MARK);
    for envelope in envelopes {
        // An envelope in a pack is at most MAX_PACK_BYTES long: its length fits.
        out.extend_from_slice(&(envelope.encoded_len() as u32).to_be_bytes());
        envelope.encode_into(&mut out);
    }
    out.into()
}

/// Whether `wire` is a pack rather than a lone envelope.
pub(super) fn is_pack(wire: &[u8]) -> bool {
    wire.first() == Some(&MARK)
}

/// The envelopes of the pack `wire`, in order; `None` if any part of it is malformed
/// (then none of them is delivered: a pack is taken whole or not at all).
pub(super) fn unpack(wire: &[u8]) -> Option<Vec<Envelope>> {
    let mut rest = wire.strip_prefix(&[MARK])?;
    let mut envelopes = Vec::new();
    while !rest.is_empty() {
        let (len, after) = rest.split_first_chunk::<4>()?;
        let len = u32::from_be_bytes(*len) as usize;
        if len > after.len() {
            return None;
        }
        let (part, after) = after.split_at(len);
        // Each envelope gets bytes of its own: one held long (a slow tunnel's queue) must
        // not keep the whole pack alive.
        envelopes.push(Envelope::decode(Bytes::copy_from_slice(part))?);
        rest = after;
    }
    (!envelopes.is_empty()).then_some(envelopes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeId;

    fn envelope(route: &str, body: &'static [u8]) -> Envelope {
        let mut envelope = Envelope::new("tun.up", route, body).unwrap();
        envelope.from = NodeId::parse("node-a").unwrap();
        envelope
    }

    fn packed(envelopes: &[Envelope]) -> Bytes {
        let size = envelopes.iter().map(|e| packed_len(e.encoded_len())).sum();
        pack(envelopes, size)
    }

    #[test]
    fn a_pack_gives_back_its_envelopes_in_order_bodies_untouched() {
        let envelopes = vec![
            envelope("r1", b"{\"type\":\"data\",\"payload\":\"a\\nb\"}\n"),
            envelope("r2", b""),
            envelope("r1", &[0xFF, 0, 1, 2]),
        ];
        let wire = packed(&envelopes);
        assert!(is_pack(&wire));
        assert_eq!(
            wire.len(),
            1 + envelopes
                .iter()
                .map(|e| packed_len(e.encoded_len()))
                .sum::<usize>()
        );
        assert_eq!(unpack(&wire), Some(envelopes));
    }

    #[test]
    fn a_lone_envelope_is_never_taken_for_a_pack() {
        let lone = envelope("r1", b"\xFFbody").encode();
        assert!(!is_pack(&lone));
        assert!(std::str::from_utf8(&[MARK]).is_err());
    }

    fn outgoing(channel: &str, body: Vec<u8>) -> Outgoing {
        let mut envelope = Envelope::new("tun.down", "r", body).unwrap();
        envelope.from = NodeId::parse("node-a").unwrap();
        Outgoing {
            channel: channel.into(),
            envelope,
        }
    }

    #[test]
    fn runs_keep_the_batch_order_one_channel_each_and_within_the_bound() {
        let small = || vec![b'x'; 100];
        let big = || vec![b'y'; MAX_PACK_BYTES];
        let batch = vec![
            outgoing("a", small()),
            outgoing("a", small()),
            outgoing("b", small()),
            outgoing("a", small()),
            outgoing("a", big()),
            outgoing("a", small()),
        ];
        assert_eq!(runs(&batch), vec![0..2, 2..3, 3..4, 4..5, 5..6]);
        let many: Vec<_> = (0..200).map(|_| outgoing("a", vec![b'z'; 1024])).collect();
        let cut = runs(&many);
        assert_eq!(cut.first().map(|run| run.start), Some(0));
        assert_eq!(cut.last().map(|run| run.end), Some(200));
        assert!(cut.windows(2).all(|two| two[0].end == two[1].start));
        for run in &cut {
            assert!(wire_of(&many[run.clone()]).len() <= MAX_PACK_BYTES);
        }
        assert_eq!(cut.len(), 4, "200 KiB in packs of at most 64 KiB");
        assert!(
            !is_pack(&wire_of(&batch[2..3])),
            "a run of one goes as it always did"
        );
        assert!(wire_of(&batch[4..5]).len() > MAX_PACK_BYTES);
    }

    #[test]
    fn a_malformed_pack_is_refused_whole() {
        let wire = packed(&[envelope("r1", b"one"), envelope("r2", b"two")]);
        // Cut anywhere inside: a length that runs past the end, or a part that is short.
        for end in 1..wire.len() {
            if end == 1 + 4 + envelope("r1", b"one").encoded_len() {
                continue; // a whole first envelope: a valid pack of one
            }
            assert_eq!(unpack(&wire[..end]), None, "cut at {end}");
        }
        // Trailing bytes that are no envelope.
        let mut long = wire.to_vec();
        long.extend_from_slice(&[0, 0, 0]);
        assert_eq!(unpack(&long), None);
        // A part that is no envelope, after a good one.
        let mut bad = packed(&[envelope("r1", b"one")]).to_vec();
        bad.extend_from_slice(&5u32.to_be_bytes());
        bad.extend_from_slice(b"junk!");
        assert_eq!(unpack(&bad), None);
        // No mark, or nothing after it.
        assert_eq!(unpack(&wire[1..]), None);
        assert_eq!(unpack(&[MARK]), None);
    }
}
