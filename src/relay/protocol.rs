//! The wire protocol of `PROTOCOL.md`: every message once, with its field limits beside it.
//!
//! Names, `type` strings and error codes are exact: the existing Mac and web apps match on
//! them. Every message is a JSON object in a text frame with a `type` field. This file holds
//! what every endpoint shares (errors, ping/pong, the info objects the HTTP API returns too,
//! parsing); [`pairing`] holds `/mac` and `/browser`, [`account`] `/ws/agent` and
//! `/ws/client` — one enum per direction and endpoint family.
//!
//! A request that parses may still break a limit: each request type has a `check` that
//! returns the [`Refusal`] to send (error code and text) before anything acts on it.

pub mod account;
pub mod json;
pub mod pairing;

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::Number;

use crate::ids::{MachineId, SessionId, UserId};

/// Error codes sent in `{"type":"error","code":...}` messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// A join with a code that was never issued, or is malformed; a resume with an unknown
    /// or ended session.
    InvalidCode,
    /// A join with a code past its expiry or withdrawn; pushed to a mac whose code expired.
    ExpiredCode,
    /// A join with a code already used, or from a browser that is already paired.
    AlreadyJoined,
    /// To a browser whose mac left.
    MacDisconnected,
    /// To a mac whose browser left.
    BrowserDisconnected,
    /// Bad JSON, unknown type, wrong fields, data before pairing, wrong endpoint.
    InvalidMessage,
    /// A message over `limits.max_message_bytes`; the connection is then closed with 1009.
    MessageTooLarge,
    /// Too many attempts or codes; try again later.
    RateLimited,
    /// `/ws/*`: the text is not JSON.
    InvalidJson,
    /// `/ws/*`: anything but `register` / `auth` before authenticating.
    NotAuthenticated,
    /// `/ws/client`: the access token is invalid or expired.
    InvalidToken,
    /// `/ws/client`: the token's user no longer exists.
    UserNotFound,
    /// `/ws/client`: no such machine *of this user* online — never says which.
    MachineNotFound,
    /// `/ws/client`: no such session on that machine.
    SessionNotFound,
    /// `/ws/client`: `data`, `resize` or `detach` for a session the client is not attached to.
    NotAttached,
    /// The relay cannot answer right now; try again: on `/ws/*` its database is
    /// unreachable; on `/mac` and `/browser`, in a cluster, Redis is.
    Unavailable,
    /// Lossless mode: the side let more unacknowledged messages pile up than
    /// `pairing.replay_window_bytes` allows; it is dropped and its pairing or attachment ends.
    ReplayWindowFull,
}

/// Why a request is refused: the error code and the text sent with it.
pub type Refusal = (ErrorCode, &'static str);

/// `{"type":"error","code":...,"message":...}`: the one error shape of every endpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorBody<'a> {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Text for humans; never contains a token, password or payload.
    pub message: Cow<'a, str>,
}

/// Messages the relay sends on every endpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Common<'a> {
    /// Something went wrong; the connection stays usable unless it is then closed.
    Error(ErrorBody<'a>),
    /// The relay's application-level heartbeat (`/ws/agent`, `/ws/client`).
    Ping {
        /// Milliseconds since the Unix epoch.
        ts: Number,
    },
    /// Answer to a peer's `ping`.
    Pong {
        /// The `ts` of the ping.
        ts: &'a Number,
    },
}

impl<'a> Common<'a> {
    /// An `error` message.
    pub fn error(code: ErrorCode, message: impl Into<Cow<'a, str>>) -> Self {
        Self::Error(ErrorBody {
            code,
            message: message.into(),
        })
    }
}

/// `UserInfo` of PROTOCOL.md §2 (HTTP answers and `authenticated`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserInfo {
    /// The user's id.
    pub id: UserId,
    /// The user's email.
    pub email: String,
}

/// `MachineInfo` of PROTOCOL.md §2 (`GET /api/machines` and `machines`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineInfo {
    /// The machine's id.
    pub id: MachineId,
    /// Its name.
    pub name: String,
    /// Whether its agent is connected now.
    pub online: bool,
    /// When its agent was last connected (its registration time if never), RFC 3339.
    pub last_seen: String,
    /// Sessions its agent reports now.
    pub session_count: usize,
}

/// Longest machine name, in characters (PROTOCOL.md §2).
pub const MAX_MACHINE_NAME_CHARS: usize = 64;

/// `SessionInfo` of PROTOCOL.md §2: a terminal session an agent reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionInfo {
    /// Chosen by the agent; unique on its machine. At most [`MAX_ID_BYTES`].
    pub id: SessionId,
    /// Shown to people. At most [`MAX_SESSION_NAME_BYTES`].
    pub name: String,
    /// What runs in it. At most [`MAX_COMMAND_BYTES`].
    pub command: String,
    /// RFC 3339, as the agent says. At most [`MAX_TIMESTAMP_BYTES`].
    pub created_at: String,
    /// Clients attached; the relay fills in its own count when it answers clients.
    #[serde(default)]
    pub attached_clients: u32,
}

/// Longest machine or session id any message may carry: ids are UUIDs or agent-chosen
/// names, and anything longer cannot name something that exists.
pub const MAX_ID_BYTES: usize = 128;
/// Longest session name.
pub const MAX_SESSION_NAME_BYTES: usize = 256;
/// Longest session command.
pub const MAX_COMMAND_BYTES: usize = 4096;
/// Longest `createdAt` text.
pub const MAX_TIMESTAMP_BYTES: usize = 64;

impl SessionInfo {
    /// Refuses a report whose fields pass their limits.
    pub fn check(&self) -> Result<(), Refusal> {
        let fits = self.id.as_str().len() <= MAX_ID_BYTES
            && self.name.len() <= MAX_SESSION_NAME_BYTES
            && self.command.len() <= MAX_COMMAND_BYTES
            && self.created_at.len() <= MAX_TIMESTAMP_BYTES;
        if fits {
            Ok(())
        } else {
            Err((ErrorCode::InvalidMessage, "a session field is too long"))
        }
    }
}

/// Why a text message is not a valid request.
#[derive(Debug)]
pub enum ParseError {
    /// Not JSON at all (`INVALID_JSON` on `/ws/*`).
    Json,
    /// JSON, but not a message of this protocol (`INVALID_MESSAGE`); the text says why.
    Message(String),
}

impl ParseError {
    /// The error code and text for `/ws/agent` and `/ws/client`.
    pub fn account_error(&self) -> (ErrorCode, &str) {
        match self {
            Self::Json => (ErrorCode::InvalidJson, "message is not valid JSON"),
            Self::Message(why) => (ErrorCode::InvalidMessage, why),
        }
    }

    /// The text for `/mac` and `/browser`, where every parse failure is `INVALID_MESSAGE`.
    pub fn describe(&self) -> &str {
        self.account_error().1
    }
}

/// Parses one text message of any endpoint's request type.
pub fn parse<'a, T: Deserialize<'a>>(text: &'a [u8]) -> Result<T, ParseError> {
    serde_json::from_slice(text).map_err(|err| {
        use serde_json::error::Category;
        match err.classify() {
            Category::Syntax | Category::Eof | Category::Io => ParseError::Json,
            Category::Data => {
                // serde's text names the field or the unknown variant; cut the "at line" tail.
                let text = err.to_string();
                let text = text.split(" at line").next().unwrap_or(&text);
                ParseError::Message(format!("invalid message: {text}"))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_serialise_with_the_exact_wire_names() {
        let frame =
            serde_json::to_string(&Common::error(ErrorCode::MacDisconnected, "gone")).unwrap();
        assert_eq!(
            frame,
            r#"{"type":"error","code":"MAC_DISCONNECTED","message":"gone"}"#
        );
    }

    #[test]
    fn session_info_uses_camel_case() {
        let session: SessionInfo = serde_json::from_str(
            r#"{"id":"s1","name":"zsh","command":"/bin/zsh","createdAt":"2026-11-22T10:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(session.attached_clients, 0);
        let text = serde_json::to_string(&session).unwrap();
        assert!(
            text.contains(r#""createdAt":"2026-11-22T10:00:00Z""#),
            "{text}"
        );
        assert!(text.contains(r#""attachedClients":0"#), "{text}");
    }

    #[test]
    fn a_session_with_an_over_long_field_is_refused() {
        let mut session = SessionInfo {
            id: "s".into(),
            name: "n".into(),
            command: "c".into(),
            created_at: "t".into(),
            attached_clients: 0,
        };
        assert!(session.check().is_ok());
        session.command = "x".repeat(MAX_COMMAND_BYTES + 1);
        assert!(session.check().is_err());
    }
}
