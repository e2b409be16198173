//! The wire protocol of `PROTOCOL.md`: one serde enum per direction and endpoint family.
//!
//! Names, `type` strings and error codes here are exact: the existing Mac and web apps
//! match on them. Every message is a JSON object in a text frame with a `type` field.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::Number;

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
    /// `/ws/*`: the relay cannot answer right now (database unreachable); try again.
    Unavailable,
}

/// `{"type":"error","code":...,"message":...}`: the one error shape of every endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorBody<'a> {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Text for humans; never contains a token, password or payload.
    pub message: Cow<'a, str>,
}

/// What a mac or a browser may send on `/mac` and `/browser`. One enum for both, so a
/// message sent to the wrong endpoint is recognised and refused by name.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PairingRequest<'a> {
    /// mac: withdraw the current code and get a fresh one, or resume a pairing that was
    /// made under this `clientId` and lost within the grace period.
    Register {
        /// The mac's stable identity, kept for logs and resume.
        #[serde(rename = "clientId")]
        client_id: String,
    },
    /// browser: pair with the mac showing `code` (trimmed and upper-cased first).
    Join {
        /// The code as the person typed it.
        code: String,
    },
    /// browser: come back to a pairing after a lost connection.
    Resume {
        /// The secret `sessionId` from `joined`.
        #[serde(rename = "sessionId")]
        session_id: String,
    },
    /// either: bytes for the partner, forwarded unchanged and in order.
    Data {
        /// Opaque to the relay; borrowed from the frame when it has no escapes.
        #[serde(borrow)]
        payload: Cow<'a, str>,
    },
    /// either: application-level ping, answered with `pong` and the same `ts`.
    Ping {
        /// Echoed unchanged.
        ts: Number,
    },
}

impl PairingRequest<'_> {
    /// The `type` string, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Register { .. } => "register",
            Self::Join { .. } => "join",
            Self::Resume { .. } => "resume",
            Self::Data { .. } => "data",
            Self::Ping { .. } => "ping",
        }
    }
}

/// What the relay sends on `/mac` and `/browser`.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PairingEvent<'a> {
    /// To a mac: its code and when it stops being joinable (ms since the Unix epoch).
    Registered {
        /// The code to show the person.
        code: &'a str,
        /// Expiry in milliseconds since the Unix epoch.
        #[serde(rename = "expiresAt")]
        expires_at: u64,
    },
    /// To both sides when paired, and again to both on a resume.
    Joined {
        /// The pairing's id: a 122-bit secret that lets a browser resume.
        #[serde(rename = "sessionId")]
        session_id: &'a str,
    },
    /// The partner's bytes.
    Data {
        /// Exactly as the partner sent it.
        payload: &'a str,
    },
}

/// Messages the relay sends on every endpoint.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Common<'a> {
    /// Something went wrong; the connection stays usable unless it is then closed.
    Error(ErrorBody<'a>),
    /// The relay's application-level heartbeat on `/ws/agent` and `/ws/client`.
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

/// `SessionInfo` of PROTOCOL.md §2: a terminal session an agent reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionInfo {
    /// Chosen by the agent; unique on its machine.
    pub id: String,
    /// Shown to people.
    pub name: String,
    /// What runs in it.
    pub command: String,
    /// RFC 3339, as the agent says.
    pub created_at: String,
    /// Clients attached; the relay fills in its own count when it answers clients.
    #[serde(default)]
    pub attached_clients: u32,
}

/// What an agent sends on `/ws/agent`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentRequest<'a> {
    /// First message: authenticate with the machine token.
    Register {
        /// `hmt_…`.
        token: String,
        /// Informational only.
        #[serde(rename = "machineName", default)]
        machine_name: Option<String>,
    },
    /// The full list of sessions (answer to `list_sessions`).
    Sessions {
        /// Every session the agent has.
        sessions: Vec<SessionInfo>,
    },
    /// A session began (perhaps after `start_session`).
    SessionStarted {
        /// The new session.
        session: SessionInfo,
    },
    /// A session ended.
    SessionEnded {
        /// Which.
        #[serde(rename = "sessionId")]
        session_id: String,
    },
    /// Terminal output for every client attached to the session.
    Data {
        /// Which session.
        #[serde(rename = "sessionId")]
        session_id: String,
        /// Opaque to the relay.
        #[serde(borrow)]
        data: Cow<'a, str>,
    },
    /// Application ping, answered with `pong`.
    Ping {
        /// Echoed.
        ts: Number,
    },
    /// Answer to the relay's `ping`.
    Pong {
        /// The relay's `ts`.
        #[serde(default)]
        ts: Option<Number>,
    },
}

/// What the relay sends on `/ws/agent` (besides [`Common`]).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentEvent<'a> {
    /// The answer to `register`.
    Registered {
        /// Whether the token was accepted.
        success: bool,
        /// The machine, on success.
        #[serde(rename = "machineId", skip_serializing_if = "Option::is_none")]
        machine_id: Option<&'a str>,
        /// Why not, on failure.
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<&'a str>,
    },
    /// Asks for a `sessions` answer.
    ListSessions,
    /// A client attached to a session.
    Attach {
        /// The session.
        #[serde(rename = "sessionId")]
        session_id: &'a str,
        /// The client's connection id.
        #[serde(rename = "clientId")]
        client_id: &'a str,
    },
    /// A client detached (or left).
    Detach {
        /// The session.
        #[serde(rename = "sessionId")]
        session_id: &'a str,
        /// The client's connection id.
        #[serde(rename = "clientId")]
        client_id: &'a str,
    },
    /// A client asked for a new session.
    StartSession {
        /// Its name.
        name: &'a str,
        /// What to run.
        command: &'a str,
    },
    /// Keystrokes from an attached client.
    Data {
        /// The session.
        #[serde(rename = "sessionId")]
        session_id: &'a str,
        /// Opaque.
        data: &'a str,
    },
    /// A client's terminal size.
    Resize {
        /// The session.
        #[serde(rename = "sessionId")]
        session_id: &'a str,
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
}

/// What a web client sends on `/ws/client`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientRequest<'a> {
    /// First message: authenticate with an access token.
    Auth {
        /// A biscuit access token.
        token: String,
    },
    /// The user's machines.
    ListMachines,
    /// The sessions of one of the user's machines.
    ListSessions {
        /// Which machine.
        #[serde(rename = "machineId")]
        machine_id: String,
    },
    /// Start receiving a session's output.
    Attach {
        /// Which machine.
        #[serde(rename = "machineId")]
        machine_id: String,
        /// Which session.
        #[serde(rename = "sessionId")]
        session_id: String,
    },
    /// Stop receiving it.
    Detach {
        /// Which session.
        #[serde(rename = "sessionId")]
        session_id: String,
    },
    /// Ask the machine's agent for a new session.
    CreateSession {
        /// Which machine.
        #[serde(rename = "machineId")]
        machine_id: String,
        /// Its name.
        name: String,
        /// What to run.
        command: String,
    },
    /// Keystrokes for an attached session.
    Data {
        /// Which session.
        #[serde(rename = "sessionId")]
        session_id: String,
        /// Opaque.
        #[serde(borrow)]
        data: Cow<'a, str>,
    },
    /// Terminal size of an attached session.
    Resize {
        /// Which session.
        #[serde(rename = "sessionId")]
        session_id: String,
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
    /// Application ping.
    Ping {
        /// Echoed.
        ts: Number,
    },
    /// Answer to the relay's `ping`.
    Pong {
        /// The relay's `ts`.
        #[serde(default)]
        ts: Option<Number>,
    },
}

/// What the relay sends on `/ws/client` (besides [`Common`]).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientEvent<'a> {
    /// The answer to a good `auth`.
    Authenticated {
        /// Who.
        user: &'a crate::accounts::UserInfo,
    },
    /// The answer to `list_machines`.
    Machines {
        /// The user's machines.
        machines: &'a [crate::machines::MachineInfo],
    },
    /// The answer to `list_sessions`.
    Sessions {
        /// Which machine.
        #[serde(rename = "machineId")]
        machine_id: &'a str,
        /// Its sessions.
        sessions: &'a [SessionInfo],
    },
    /// The answer to `attach`.
    Attached {
        /// The session.
        #[serde(rename = "sessionId")]
        session_id: &'a str,
    },
    /// The answer to `detach`.
    Detached {
        /// The session.
        #[serde(rename = "sessionId")]
        session_id: &'a str,
    },
    /// A session began on one of the user's machines.
    SessionStarted {
        /// Which machine.
        #[serde(rename = "machineId")]
        machine_id: &'a str,
        /// The session.
        session: &'a SessionInfo,
    },
    /// A session ended (the client is detached from it).
    SessionEnded {
        /// Which machine.
        #[serde(rename = "machineId")]
        machine_id: &'a str,
        /// Which session.
        #[serde(rename = "sessionId")]
        session_id: &'a str,
    },
    /// One of the user's machines came online or went offline.
    MachineStatus {
        /// Which machine.
        #[serde(rename = "machineId")]
        machine_id: &'a str,
        /// Now online?
        online: bool,
    },
    /// Terminal output of an attached session.
    Data {
        /// Which session.
        #[serde(rename = "sessionId")]
        session_id: &'a str,
        /// Opaque.
        data: &'a str,
    },
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

/// Parses one `/mac` or `/browser` message.
pub fn parse_pairing(text: &[u8]) -> Result<PairingRequest<'_>, String> {
    parse(text).map_err(|err| err.describe().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialise_with_the_exact_wire_names() {
        let frame = serde_json::to_string(&PairingEvent::Registered {
            code: "H4F7KN",
            expires_at: 1732300000000,
        })
        .unwrap();
        assert_eq!(
            frame,
            r#"{"type":"registered","code":"H4F7KN","expiresAt":1732300000000}"#
        );
        let frame =
            serde_json::to_string(&Common::error(ErrorCode::MacDisconnected, "gone")).unwrap();
        assert_eq!(
            frame,
            r#"{"type":"error","code":"MAC_DISCONNECTED","message":"gone"}"#
        );
        let frame = serde_json::to_string(&PairingEvent::Joined { session_id: "s" }).unwrap();
        assert_eq!(frame, r#"{"type":"joined","sessionId":"s"}"#);
    }

    #[test]
    fn data_payloads_borrow_when_they_can() {
        match parse_pairing(br#"{"type":"data","payload":"plain"}"#).unwrap() {
            PairingRequest::Data { payload } => assert!(matches!(payload, Cow::Borrowed(_))),
            other => panic!("{other:?}"),
        }
        match parse_pairing(br#"{"type":"data","payload":"esc\u001b[0m"}"#).unwrap() {
            PairingRequest::Data { payload } => assert_eq!(payload, "esc\u{1b}[0m"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_input_is_described_without_echoing_it() {
        assert_eq!(
            parse_pairing(b"{not json").unwrap_err(),
            "message is not valid JSON"
        );
        let err = parse_pairing(br#"{"type":"join"}"#).unwrap_err();
        assert!(err.contains("missing field `code`"), "{err}");
        let err = parse_pairing(br#"{"type":"teleport"}"#).unwrap_err();
        assert!(err.contains("unknown variant"), "{err}");
    }
}

#[cfg(test)]
mod account_tests {
    use super::*;

    #[test]
    fn agent_events_serialise_with_the_exact_wire_names() {
        let ok = AgentEvent::Registered {
            success: true,
            machine_id: Some("m1"),
            error: None,
        };
        assert_eq!(
            serde_json::to_string(&ok).unwrap(),
            r#"{"type":"registered","success":true,"machineId":"m1"}"#
        );
        let refused = AgentEvent::Registered {
            success: false,
            machine_id: None,
            error: Some("invalid machine token"),
        };
        assert_eq!(
            serde_json::to_string(&refused).unwrap(),
            r#"{"type":"registered","success":false,"error":"invalid machine token"}"#
        );
        assert_eq!(
            serde_json::to_string(&AgentEvent::ListSessions).unwrap(),
            r#"{"type":"list_sessions"}"#
        );
        assert_eq!(
            serde_json::to_string(&AgentEvent::StartSession {
                name: "n",
                command: "c"
            })
            .unwrap(),
            r#"{"type":"start_session","name":"n","command":"c"}"#
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
    fn not_json_and_not_a_message_are_told_apart() {
        assert!(matches!(
            parse::<ClientRequest>(b"{oops"),
            Err(ParseError::Json)
        ));
        assert!(matches!(
            parse::<ClientRequest>(br#"{"type":"attach"}"#),
            Err(ParseError::Message(_))
        ));
    }
}
