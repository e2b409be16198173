//! Property tests of every parser that reads untrusted bytes: the wire messages of every
//! endpoint, the forwarding headers, and the configuration from the environment. (The
//! WebSocket frame decoder is private to `transport`; its properties are a unit-test module,
//! `src/transport/decode_props.rs`.)
//!
//! Each property runs `PROPTEST_CASES` cases (proptest's default, 256, in CI);
//! `scripts/fuzz.sh` runs the same properties for a long campaign.

#[path = "properties/json_text.rs"]
mod json_text;
#[path = "properties/proxy.rs"]
mod proxy;
#[path = "properties/settings.rs"]
mod settings;
#[path = "properties/wire.rs"]
mod wire;
