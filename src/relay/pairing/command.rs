//! `ToConn`: what the `SessionRegistry` (or a partner) tells one pairing connection.
//! Its own file so that the pipes, the registry and the socket can all name it without
//! importing each other.

use crate::ids::{Outcome, PairingId};
use crate::relay::delivery::Command;
use crate::relay::protocol::ErrorCode;
use crate::relay::tunnel::RemoteEvent;
use actix::Message;

/// Registry (or partner) → connection actor.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub enum ToConn {
    /// A mac's fresh code; `expires_at` in ms since the Unix epoch.
    Registered {
        /// The code.
        code: String,
        /// Expiry, ms since the epoch.
        expires_at: u64,
    },
    /// Send an `error`; the connection stays open.
    Error {
        /// The code.
        code: ErrorCode,
        /// Text for humans.
        message: &'static str,
    },
    /// Paired (or re-paired on resume): take the pairing from the connection's
    /// [`PairingSlot`](super::registry::PairingSlot). The registry fills the slot before it queues `joined`, so a
    /// connection whose client answers `joined` at once finds its pipes even if this
    /// message has not been handled yet. Names the pairing, for the audit log even when
    /// the pairing ended before the connection took it.
    Paired(PairingId),
    /// The pairing ended; send the `error` `code` and become unpaired.
    PartnerGone {
        /// `MAC_DISCONNECTED` or `BROWSER_DISCONNECTED`.
        code: ErrorCode,
    },
    /// Close this connection.
    Close(Outcome),
    /// For a side tunnelled to another node: what its home sent.
    Remote(RemoteEvent),
}

impl Command for ToConn {
    fn close(outcome: Outcome) -> Self {
        Self::Close(outcome)
    }
}
