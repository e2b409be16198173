//! Quick pairing by code (`/mac`, `/browser`; PROTOCOL.md §1): the code format, the rules
//! table, the `SessionRegistry` actor that applies them, and the connection protocol.

pub mod code;
pub mod command;
pub mod handoff;
pub mod homes;
pub mod pipes;
pub mod registry;
pub mod remote;
pub mod socket;
pub mod table;

use std::time::Duration;

/// How long a connection or a hand-off waits for the registry to answer. The registry
/// answers in microseconds; this only bounds a wedged one.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(5);
