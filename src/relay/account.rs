//! Accounts (`/ws/agent`, `/ws/client`; PROTOCOL.md §3): the machine table's rules, the
//! `MachineRegistry` actor that applies them, the agent and client protocols, and the
//! machine directory the HTTP API shares.

pub mod agent;
pub mod client;
pub mod directory;
pub mod handoff;
pub mod node;
pub mod registry;
pub mod remote;
pub mod streams;
pub mod table;

use std::time::Duration;

/// How long a connection or a request waits for the registry to answer. The registry
/// answers in microseconds; this only bounds a wedged one.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(5);
