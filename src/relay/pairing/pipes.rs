//! `Pipes`: the two directions of one pairing, shared by the registry and both sides'
//! connection actors.
//!
//! Each direction is a [`Stream`] to one side — its connection now, what is held for it
//! while it is away, and in lossless mode its numbered replay window — so a side that
//! resumes on a new connection finds everything it missed where it left it. The registry
//! connects and disconnects the sides; each side's actor, on its own thread, pushes its
//! data straight into the other direction. One mutex per pairing, held for a push.

use std::sync::{Arc, Mutex};

use super::command::ToConn;
use crate::ids::{ClientKey, Role};
use serde::{Deserialize, Serialize};

use crate::relay::delivery::{self, Accepted, Stream, StreamState};

/// Both directions of one pairing.
#[derive(Debug)]
pub struct Pipes {
    /// Frames for the mac, and for the browser.
    to: [Stream<ToConn>; 2],
    /// The last of each side's own `data` messages the relay accepted (counted from 1,
    /// whether or not the side numbers them).
    received: [u64; 2],
    /// The pairing's id as the audit log names it, hashed once for the pairing's events.
    fingerprint: String,
}

/// [`Pipes`] as another node takes them over.
#[derive(Debug, Serialize, Deserialize)]
pub struct PipesState {
    /// Towards the mac, and towards the browser.
    pub to: [StreamState; 2],
    /// The last of each side's own messages accepted.
    pub received: [u64; 2],
}

/// A pairing handed from a node that leaves to another (see `super::handoff`).
#[derive(Debug, Serialize, Deserialize)]
pub struct Handoff {
    /// The pairing id (`sessionId`).
    pub session: String,
    /// Its mac's resumable `clientId`, if any.
    pub client: Option<ClientKey>,
    /// Both directions.
    pub pipes: PipesState,
}

/// One pairing's pipes, shared.
pub type SharedPipes = Arc<Mutex<Pipes>>;

fn index(role: Role) -> usize {
    match role {
        Role::Mac => 0,
        Role::Browser => 1,
    }
}

impl Pipes {
    /// A new pairing's pipes, holding at most `hold_limit` bytes for an away side;
    /// `fingerprint` names the pairing in the audit log ([`PairingId::fingerprint`]).
    ///
    /// [`PairingId::fingerprint`]: crate::ids::PairingId::fingerprint
    pub fn shared(hold_limit: usize, fingerprint: String) -> SharedPipes {
        Arc::new(Mutex::new(Self {
            to: [Stream::new(hold_limit), Stream::new(hold_limit)],
            received: [0, 0],
            fingerprint,
        }))
    }

    /// The pairing's fingerprint, for the audit log.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The direction towards `role`.
    pub fn to(&mut self, role: Role) -> &mut Stream<ToConn> {
        &mut self.to[index(role)]
    }

    /// The last of `role`'s messages accepted.
    pub fn received(&self, role: Role) -> u64 {
        self.received[index(role)]
    }

    /// What the pipes keep, to carry the pairing on on another node.
    pub fn export(&self) -> PipesState {
        PipesState {
            to: [self.to[0].export(), self.to[1].export()],
            received: self.received,
        }
    }

    /// Pipes to two sides that are away, keeping what `state` kept.
    pub fn import(state: PipesState, fingerprint: String) -> SharedPipes {
        let [mac, browser] = state.to;
        Arc::new(Mutex::new(Self {
            to: [Stream::import(mac), Stream::import(browser)],
            received: state.received,
            fingerprint,
        }))
    }

    /// Counts one `data` message from `from`, numbered `seq` if the side numbers them.
    pub fn accept(&mut self, from: Role, seq: Option<u64>) -> Accepted {
        delivery::accept(&mut self.received[index(from)], seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_counted_and_re_sends_recognised() {
        let pipes = Pipes::shared(1024, "0badf00d".into());
        let mut pipes = delivery::lock(&pipes);
        assert_eq!(pipes.accept(Role::Browser, None), Accepted::New);
        assert_eq!(pipes.accept(Role::Browser, Some(2)), Accepted::New);
        assert_eq!(pipes.accept(Role::Browser, Some(2)), Accepted::Again);
        assert_eq!(pipes.accept(Role::Browser, Some(1)), Accepted::Again);
        assert_eq!(
            pipes.accept(Role::Browser, Some(9)),
            Accepted::Skips { expected: 3 }
        );
        assert_eq!(pipes.received(Role::Browser), 2);
        assert_eq!(pipes.received(Role::Mac), 0);
    }
}
