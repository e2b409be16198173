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
    /// Answer to `ping`.
    Pong {
        /// The `ts` of the ping.
        ts: &'a Number,
    },
    /// Something went wrong; the connection stays usable unless it is then closed.
    Error(ErrorBody<'a>),
}

impl<'a> PairingEvent<'a> {
    /// An `error` event.
    pub fn error(code: ErrorCode, message: impl Into<Cow<'a, str>>) -> Self {
        Self::Error(ErrorBody {
            code,
            message: message.into(),
        })
    }
}

/// Parses one text message, or explains in plain words why it is not a valid request.
pub fn parse_pairing(text: &[u8]) -> Result<PairingRequest<'_>, String> {
    serde_json::from_slice(text).map_err(|err| describe(&err))
}

/// A short, safe description of a parse failure: it names the problem, never echoes input
/// beyond a field or type name.
fn describe(err: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match err.classify() {
        Category::Syntax | Category::Eof | Category::Io => "message is not valid JSON".into(),
        Category::Data => {
            // serde's text names the field or the unknown variant; cut the "at line" tail.
            let text = err.to_string();
            let text = text.split(" at line").next().unwrap_or(&text);
            format!("invalid message: {text}")
        }
    }
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
        let frame = serde_json::to_string(&PairingEvent::error(ErrorCode::MacDisconnected, "gone"))
            .unwrap();
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
