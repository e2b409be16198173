//! hermit-relay: lets a Mac app that owns terminal sessions and a web browser find each
//! other and talk, through one relay deployed behind a reverse proxy.
//!
//! # Layout
//! - [`config`]: `Settings`, loaded from `config/default.toml`, a file and the environment.
//! - [`startup`]: `Application::build` → `port` → `run_until_stopped`.
//! - [`transport`]: WebSocket plumbing — bounded outbox, inbound frames, cutting a socket.
//! - [`relay`]: the protocol, pairing codes, the `SessionRegistry` and connection actors.
//! - [`routes`]: plain HTTP routes (`/health`).
//!
//! # Actors
//! ```text
//!   /mac socket ── PairSocket ──┐ Connect / Register / Disconnect  ┌─ SessionRegistry
//!                     │   ▲      └──────────────────────────────▶ │  codes, expiry timers,
//!                     │   └──── ToConn (registered, paired, …) ── │  pairings, grace timers
//!                     │ data: pushed straight into the partner's outbox
//!                     ▼
//!   /browser socket ─ PairSocket (Join / Resume / Disconnect → registry)
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod relay;
pub mod routes;
pub mod startup;
pub mod transport;
