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
