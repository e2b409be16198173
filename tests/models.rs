//! Model-based property tests of the relay's two rule tables, driven directly (no actix):
//! random sequences of what connections and timers do, each applied to the real table and
//! to a small reference model written in the test; the effects and the counts must agree
//! at every step.
//!
//! - `pairing`: `PairingTable` — connect, register, join, resume, drop, unpair, expire, and
//!   takeovers by `clientId` / `sessionId`.
//! - `directory`: `MachineTable` — agents come, are replaced, report and end sessions,
//!   clients attach and detach, machines and users are deleted; no effect ever crosses
//!   from one user's machines to another user's clients.
//!
//! `PROPTEST_CASES` sets the number of sequences (proptest's default, 256, in CI).

#[path = "models/directory.rs"]
mod directory;
#[path = "models/pairing.rs"]
mod pairing;
#[path = "models/pairing_model.rs"]
mod pairing_model;
