//! Identifiers and the small shared types every layer names. Depends on nothing else in the
//! crate, so anything may import it without closing an import circle.
//!
//! Ids are newtypes so a machine id can never be passed where a user id is expected, and
//! none crosses a module boundary as a bare `String` or `u64`.

use std::borrow::Borrow;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The maps and sets of the relay's tables: std's, hashed with foldhash (seeded per
/// process) rather than SipHash. Their keys are the relay's own ids and codes, looked up
/// several times per pairing and per message; SipHash cost ~170 instructions a lookup,
/// foldhash a fraction of that, and a random seed still keeps lookups with chosen keys
/// (codes typed by a browser) from being steered.
pub type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// See [`HashMap`].
pub type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// One WebSocket connection, unique for the life of the process — and, in practice,
/// across the nodes of a cluster: each process counts from a random start (a multiple of
/// 2^20 below 2^52), so a client id an agent knows (`clientId` in `attach`) still names
/// one client when its user is handed to another node (`relay::account::handoff`). Two
/// nodes' ids meet only if they drew the same start, or one counted past 2^20 connections
/// into the other's: about one chance in 2^31 per pair of nodes; an adopting node refuses
/// an id it already uses. Below 2^53, so a web page reads it exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConnId(u64);

impl ConnId {
    /// A fresh id, never handed out before in this process.
    pub fn next() -> Self {
        static NEXT: std::sync::LazyLock<AtomicU64> = std::sync::LazyLock::new(|| {
            let start = u64::from(rand::random::<u32>()) << 20;
            AtomicU64::new(start.max(1))
        });
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// The connection numbered `id` (tests name connections by number).
    pub const fn new(id: u64) -> Self {
        Self(id)
    }

    /// The number, for logs and the wire (`clientId` in `attach`).
    pub fn get(self) -> u64 {
        self.0
    }
}

impl From<u64> for ConnId {
    fn from(id: u64) -> Self {
        Self(id)
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The first 4 bytes of the SHA-256 of `bytes`, in lower-case hex: a short tag that cannot
/// be turned back into what it tags. Hex by table, not by `format!` per byte: a pairing
/// writes two of these into the audit log.
fn fingerprint(bytes: &[u8]) -> String {
    digest_hex(bytes, 4)
}

/// The first 16 bytes of the SHA-256 of `bytes`, in lower-case hex: a name for a secret id
/// in a shared store (Redis) — unique among any number of ids, useless to resume by.
fn cluster_key(bytes: &[u8]) -> String {
    digest_hex(bytes, 16)
}

fn digest_hex(bytes: &[u8], len: usize) -> String {
    use sha2::{Digest, Sha256};
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(len * 2);
    for byte in &digest[..len] {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out
}

/// One relay node of a cluster: `cluster.node_id`, or random when not set. It names the
/// node's heartbeat key and its channel in Redis, so it is 1 to 64 of `[A-Za-z0-9_-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(String);

impl NodeId {
    /// A fresh random id (`n-` and 16 hex digits).
    pub fn random() -> Self {
        Self(format!("n-{}", &Uuid::new_v4().simple().to_string()[..16]))
    }

    /// `text` if it is a valid node id.
    pub fn parse(text: &str) -> Option<Self> {
        let valid = (1..=64).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        valid.then(|| Self(text.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One quick pairing: the `sessionId` both sides are given in `joined`. A 122-bit secret —
/// whoever presents it in `resume` is that browser — so it is random (UUID v4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PairingId(Uuid);

impl PairingId {
    /// A fresh random id.
    pub fn random() -> Self {
        Self(Uuid::new_v4())
    }

    /// The id in a `resume` message, if it is one.
    pub fn parse(text: &str) -> Option<Self> {
        Uuid::parse_str(text).ok().map(Self)
    }

    /// A short, non-reversible tag for logs and the audit log: the id itself resumes the
    /// pairing, so it is never written down.
    pub fn fingerprint(&self) -> String {
        fingerprint(self.0.as_bytes())
    }

    /// Its name in a cluster's Redis (see [`cluster_key`]).
    pub fn cluster_key(&self) -> String {
        cluster_key(self.0.as_bytes())
    }
}

impl fmt::Display for PairingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Declares a newtype over `String` for an id that arrives as text.
macro_rules! text_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl From<String> for $name {
            fn from(id: String) -> Self {
                Self(id)
            }
        }

        impl From<&str> for $name {
            fn from(id: &str) -> Self {
                Self(id.to_owned())
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

text_id!(
    /// A registered machine (a Mac), UUID v4 text, as stored.
    MachineId
);
text_id!(
    /// A user account, UUID v4 text, as stored.
    UserId
);
text_id!(
    /// A terminal session on a machine, chosen by its agent; unique on that machine only.
    SessionId
);
text_id!(
    /// The `clientId` a mac sends in `register`, or a lossless web client in `auth`: kept
    /// for logs and, when it is a secret, the key that lets it resume after a lost
    /// connection.
    ClientKey
);

impl ClientKey {
    /// Whether this id may resume a pairing. Whoever presents it takes the pairing over, so
    /// it must be unguessable: only a random (version 4) UUID qualifies, 122 bits.
    pub fn resumable(&self) -> bool {
        Uuid::parse_str(&self.0).is_ok_and(|id| id.get_version_num() == 4)
    }

    /// A short, non-reversible tag for logs: enough to correlate lines, useless to resume.
    pub fn fingerprint(&self) -> String {
        fingerprint(self.0.as_bytes())
    }

    /// Its name in a cluster's Redis (see [`cluster_key`]).
    pub fn cluster_key(&self) -> String {
        cluster_key(self.0.as_bytes())
    }
}

/// The two sides of a quick pairing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// The Mac app, on `/mac`: shows the code.
    Mac,
    /// The web page, on `/browser`: types the code.
    Browser,
}

impl Role {
    /// The other side.
    pub fn other(self) -> Self {
        match self {
            Self::Mac => Self::Browser,
            Self::Browser => Self::Mac,
        }
    }

    /// Its endpoint.
    pub fn endpoint(self) -> Endpoint {
        match self {
            Self::Mac => Endpoint::Mac,
            Self::Browser => Endpoint::Browser,
        }
    }
}

/// The four WebSocket endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/mac`
    Mac,
    /// `/browser`
    Browser,
    /// `/ws/agent`
    Agent,
    /// `/ws/client`
    Client,
}

impl Endpoint {
    /// Every endpoint, in index order.
    pub const ALL: [Endpoint; 4] = [Self::Mac, Self::Browser, Self::Agent, Self::Client];

    /// Its path.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mac => "/mac",
            Self::Browser => "/browser",
            Self::Agent => "/ws/agent",
            Self::Client => "/ws/client",
        }
    }

    /// The endpoint served at `route`, if it is a WebSocket route.
    pub fn from_route(route: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == route)
    }

    /// Whether web pages open it (so `server.allowed_origins` applies).
    pub fn browser_facing(self) -> bool {
        matches!(self, Self::Browser | Self::Client)
    }
}

/// Why a connection ends; decides the close frame, and whether a partner may wait for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The peer sent a close frame.
    PeerClosed,
    /// The socket ended without a close frame.
    Lost,
    /// Nothing arrived for interval + timeout.
    HeartbeatTimeout,
    /// It read slower than it was written to, past `limits.max_outbound_bytes`.
    SlowConsumer,
    /// A message over `limits.max_message_bytes`.
    TooLarge,
    /// Broken WebSocket framing.
    ProtocolError,
    /// A text message that is not UTF-8.
    InvalidUtf8,
    /// Never paired, or never authenticated, in time.
    Idle,
    /// A newer connection took its place (resume, or a second agent with the same token).
    Replaced,
    /// Its agent's machine was deleted, or its credentials were refused.
    Refused,
    /// Its credentials could not be checked (the database is unreachable): try again.
    Unavailable,
    /// Lossless mode: it left more unacknowledged than its replay window holds.
    WindowFull,
}

impl Outcome {
    /// Every outcome, in index order (for metrics).
    pub const ALL: [Outcome; 12] = [
        Self::PeerClosed,
        Self::Lost,
        Self::HeartbeatTimeout,
        Self::SlowConsumer,
        Self::TooLarge,
        Self::ProtocolError,
        Self::InvalidUtf8,
        Self::Idle,
        Self::Replaced,
        Self::Refused,
        Self::Unavailable,
        Self::WindowFull,
    ];

    /// A metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::PeerClosed => "peer_closed",
            Self::Lost => "lost",
            Self::HeartbeatTimeout => "heartbeat_timeout",
            Self::SlowConsumer => "slow_consumer",
            Self::TooLarge => "message_too_large",
            Self::ProtocolError => "protocol_error",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::Idle => "idle",
            Self::Replaced => "replaced",
            Self::Refused => "refused",
            Self::Unavailable => "unavailable",
            Self::WindowFull => "window_full",
        }
    }

    /// Only a connection that vanished may be resumed; every other end is final at once.
    pub fn clean(self) -> bool {
        !matches!(self, Self::Lost | Self::HeartbeatTimeout)
    }

    /// For logs and close frames.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PeerClosed => "peer closed",
            Self::Lost => "connection lost",
            Self::HeartbeatTimeout => "heartbeat timeout",
            Self::SlowConsumer => "too slow: outbound buffer full",
            Self::TooLarge => "message too large",
            Self::ProtocolError => "protocol error",
            Self::InvalidUtf8 => "text is not valid UTF-8",
            Self::Idle => "not paired or authenticated in time",
            Self::Replaced => "replaced by a newer connection",
            Self::Refused => "access revoked",
            Self::Unavailable => "cannot check credentials now; try again",
            Self::WindowFull => "too far behind: replay window full",
        }
    }
}

/// How a side left a connection, for what keeps its place (a pairing, an attachment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// A close frame, or a close the relay chose: gone for good.
    Clean,
    /// The connection was lost: the side may come back within the resume grace.
    Lost,
    /// The side's node is leaving (a rolling restart) and closed it with 1001: it comes
    /// back on another node, whatever became of its partner.
    Moved,
}

impl Departure {
    /// Its word on the wire between nodes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Clean => "clean",
            Self::Lost => "lost",
            Self::Moved => "moved",
        }
    }

    /// The departure named `text`; anything unknown is a loss.
    pub fn parse(text: &[u8]) -> Self {
        match text {
            b"clean" => Self::Clean,
            b"moved" => Self::Moved,
            _ => Self::Lost,
        }
    }
}

/// Why a message the relay meant to deliver was not (counted by reason in
/// `hermit_messages_dropped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The recipient's outbox was full: it is dropped as a slow consumer.
    SlowConsumer,
    /// The recipient's socket had already closed, and it cannot come back.
    PeerGone,
    /// Held for an away side past `pairing.resume_buffer_bytes`: the pairing ends.
    HoldOverflow,
    /// Lossless mode: unacknowledged past `pairing.replay_window_bytes`; the side is told
    /// and dropped, and its pairing or attachment ends.
    WindowFull,
}

impl DropReason {
    /// Every reason, in index order (for metrics).
    pub const ALL: [DropReason; 4] = [
        Self::SlowConsumer,
        Self::PeerGone,
        Self::HoldOverflow,
        Self::WindowFull,
    ];

    /// A metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::SlowConsumer => "slow_consumer",
            Self::PeerGone => "peer_gone",
            Self::HoldOverflow => "hold_overflow",
            Self::WindowFull => "window_full",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_ids_are_never_repeated() {
        let a = ConnId::next();
        let b = ConnId::next();
        assert!(b > a);
    }

    #[test]
    fn pairing_ids_parse_back_and_refuse_garbage() {
        let id = PairingId::random();
        assert_eq!(PairingId::parse(&id.to_string()), Some(id));
        assert_eq!(PairingId::parse("not-a-uuid"), None);
    }

    #[test]
    fn only_a_random_uuid_client_id_can_resume() {
        assert!(ClientKey::from(Uuid::new_v4().to_string()).resumable());
        for weak in ["mac-1", "", "00000000-0000-0000-0000-000000000000"] {
            assert!(!ClientKey::from(weak).resumable(), "{weak}");
        }
        // A time-based UUID is partly guessable.
        assert!(!ClientKey::from("c232ab00-9414-11ec-b3c8-9e6bdeced846").resumable());
    }

    #[test]
    fn a_client_id_fingerprint_does_not_reveal_it() {
        let id = ClientKey::from(Uuid::new_v4().to_string());
        let tag = id.fingerprint();
        assert_eq!(tag.len(), 8);
        assert!(!id.as_str().contains(&tag));
    }

    #[test]
    fn a_cluster_key_is_a_longer_sha256_prefix() {
        // SHA-256("abc") = ba7816bf 8f01cfea 414140de 5dae2223 …
        let key = ClientKey::from("abc").cluster_key();
        assert_eq!(key, "ba7816bf8f01cfea414140de5dae2223");
        let id = PairingId::random();
        assert_eq!(id.cluster_key().len(), 32);
        assert!(id.cluster_key().starts_with(&id.fingerprint()));
        assert_ne!(id.cluster_key(), PairingId::random().cluster_key());
    }

    #[test]
    fn a_fingerprint_is_the_sha256_prefix_in_hex() {
        // SHA-256("abc") = ba7816bf 8f01cfea …: the tag logs already hold stays the same.
        assert_eq!(ClientKey::from("abc").fingerprint(), "ba7816bf");
        assert_eq!(fingerprint(&[0xff; 3]), {
            use sha2::{Digest, Sha256};
            let digest = Sha256::digest([0xff; 3]);
            digest[..4]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        });
    }

    #[test]
    fn text_ids_serialise_as_plain_strings() {
        let id = MachineId::from("m-1");
        assert_eq!(serde_json::to_string(&id).unwrap(), r#""m-1""#);
    }
}
