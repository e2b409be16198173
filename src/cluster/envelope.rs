//! What one node publishes to another: an [`Envelope`], and its bytes on the wire.
//!
//! The wire form is three header lines and the body, `from\nkind\nroute\nbody`: the body is
//! whatever the sender's product put there (a relayed frame, usually JSON), carried as is,
//! so forwarding a message costs no re-encoding. The header fields are ids and names that
//! never hold a newline ([`Envelope::new`] refuses them).

use bytes::Bytes;

use crate::ids::NodeId;

/// A message between nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The node that sent it (set by [`crate::cluster::Cluster::send`]).
    pub from: NodeId,
    /// What it is, for the receiver to dispatch on: `pairing.data`, `pairing.close`…
    pub kind: String,
    /// Which connection or pairing it concerns: when it is lost (a full queue, Redis
    /// down), the connections of this route are dropped rather than left with a gap.
    pub route: String,
    /// The product's payload, opaque here.
    pub body: Bytes,
}

/// An envelope whose header would not survive the wire form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an envelope's kind and route must be non-empty lines of at most 256 bytes")]
pub struct BadHeader;

fn header_ok(field: &str) -> bool {
    !field.is_empty() && field.len() <= 256 && !field.contains('\n')
}

impl Envelope {
    /// An envelope from this node (`from` is filled in when it is sent).
    pub fn new(
        kind: impl Into<String>,
        route: impl Into<String>,
        body: impl Into<Bytes>,
    ) -> Result<Self, BadHeader> {
        let (kind, route) = (kind.into(), route.into());
        if !header_ok(&kind) || !header_ok(&route) {
            return Err(BadHeader);
        }
        Ok(Self {
            // unwrap: a valid literal id; `send` replaces it with this node's.
            from: NodeId::parse("unsent").unwrap(),
            kind,
            route,
            body: body.into(),
        })
    }

    /// The bytes published: `from\nkind\nroute\nbody`.
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out.into()
    }

    /// Appends the wire form to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        for field in [self.from.as_str(), &self.kind, &self.route] {
            out.extend_from_slice(field.as_bytes());
            out.push(b'\n');
        }
        out.extend_from_slice(&self.body);
    }

    /// Bytes in the wire form: what the queues count.
    pub fn encoded_len(&self) -> usize {
        self.from.as_str().len() + self.kind.len() + self.route.len() + 3 + self.body.len()
    }

    /// The envelope in `bytes`, if they are one.
    pub fn decode(bytes: Bytes) -> Option<Self> {
        let mut fields = [0usize; 3];
        let mut at = 0;
        for field in &mut fields {
            let end = at + bytes[at..].iter().position(|&b| b == b'\n')?;
            *field = end;
            at = end + 1;
        }
        let text = |from: usize, to: usize| std::str::from_utf8(&bytes[from..to]).ok();
        let from = NodeId::parse(text(0, fields[0])?)?;
        let kind = text(fields[0] + 1, fields[1])?.to_owned();
        let route = text(fields[1] + 1, fields[2])?.to_owned();
        if !header_ok(&kind) || !header_ok(&route) {
            return None;
        }
        Some(Self {
            from,
            kind,
            route,
            body: bytes.slice(fields[2] + 1..),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_survives_its_wire_form_body_untouched() {
        let mut envelope =
            Envelope::new("pairing.data", "p-1", &b"{\"a\":\"x\ny\"}\n"[..]).unwrap();
        envelope.from = NodeId::parse("node-a").unwrap();
        let wire = envelope.encode();
        assert_eq!(wire.len(), envelope.encoded_len());
        assert_eq!(Envelope::decode(wire), Some(envelope));
    }

    #[test]
    fn headers_with_newlines_and_garbage_are_refused() {
        assert_eq!(Envelope::new("a\nb", "r", ""), Err(BadHeader));
        assert_eq!(Envelope::new("k", "", ""), Err(BadHeader));
        assert_eq!(Envelope::decode(Bytes::from_static(b"node\nkind")), None);
        assert_eq!(
            Envelope::decode(Bytes::from_static(b"bad id\nk\nr\n")),
            None
        );
        assert_eq!(Envelope::decode(Bytes::from_static(b"n\n\nr\n")), None);
    }
}
