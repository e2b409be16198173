//! Quick pairing on `/mac` and `/browser` (PROTOCOL.md §1): what macs and browsers send,
//! what the relay sends them.
//!
//! The lossless extension (PROTOCOL.md §1.5) adds optional fields — `ack` and
//! `lastSeq` on `register`, `join` and `resume`, `seq` on `data` — and the `ack` message.
//! A side that never sends them sees exactly the messages of PROTOCOL.md.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Number;

use super::json::{self, Text};
use super::{ErrorCode, Refusal};
use crate::ids::{ClientKey, Role};
use crate::transport::text_frame_of;

/// Longest `clientId` accepted in `register`, in characters.
pub const MAX_CLIENT_ID_CHARS: usize = 128;
/// Longest `join` code or `resume` session id passed on to the registry: anything longer
/// cannot be valid, so it is refused without bothering the registry.
pub const MAX_CODE_INPUT_BYTES: usize = 64;

/// What a mac or a browser may send. One enum for both, so a message sent to the wrong
/// endpoint is recognised and refused by name.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PairingRequest<'a> {
    /// mac: withdraw the current code and get a fresh one, or resume a pairing that was
    /// made under this `clientId` and lost within the grace period.
    Register {
        /// The mac's stable identity: 1 to [`MAX_CLIENT_ID_CHARS`] characters.
        #[serde(rename = "clientId")]
        client_id: ClientKey,
        /// Lossless mode: opt in to sequence numbers and acknowledgements.
        #[serde(default)]
        ack: bool,
        /// Lossless mode, resuming: the last `seq` received before the connection was lost.
        #[serde(rename = "lastSeq", default)]
        last_seq: Option<u64>,
    },
    /// browser: pair with the mac showing `code` (trimmed and upper-cased first).
    Join {
        /// The code as the person typed it; at most [`MAX_CODE_INPUT_BYTES`].
        code: String,
        /// Lossless mode: opt in to sequence numbers and acknowledgements.
        #[serde(default)]
        ack: bool,
    },
    /// browser: come back to a pairing after a lost connection.
    Resume {
        /// The secret `sessionId` from `joined`; at most [`MAX_CODE_INPUT_BYTES`].
        #[serde(rename = "sessionId")]
        session_id: String,
        /// Lossless mode: opt in to sequence numbers and acknowledgements.
        #[serde(default)]
        ack: bool,
        /// Lossless mode: the last `seq` received before the connection was lost.
        #[serde(rename = "lastSeq", default)]
        last_seq: Option<u64>,
    },
    /// either: bytes for the partner, forwarded unchanged and in order.
    Data {
        /// Opaque to the relay; kept as JSON text on the fast path (see [`parse`]).
        #[serde(borrow)]
        payload: Text<'a>,
        /// Lossless mode: this message's number among the side's `data` (1, 2, 3, …); a
        /// number the relay already has marks a re-send, which is dropped.
        #[serde(default)]
        seq: Option<u64>,
    },
    /// either, lossless mode: "I have everything you sent me up to `seq`".
    Ack {
        /// The last `seq` received, in order.
        seq: u64,
    },
    /// either: application-level ping, answered with `pong` and the same `ts`.
    Ping {
        /// Echoed unchanged.
        ts: Number,
    },
    /// either, lossless mode: the answer to the relay's JSON `ping` (optional; any message
    /// proves the link alive).
    Pong {
        /// The relay's `ts`.
        #[serde(default)]
        ts: Option<Number>,
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
            Self::Ack { .. } => "ack",
            Self::Ping { .. } => "ping",
            Self::Pong { .. } => "pong",
        }
    }

    /// Whether a `role` may send it at all.
    pub fn allowed_for(&self, role: Role) -> bool {
        match self {
            Self::Register { .. } => role == Role::Mac,
            Self::Join { .. } | Self::Resume { .. } => role == Role::Browser,
            Self::Data { .. } | Self::Ack { .. } | Self::Ping { .. } | Self::Pong { .. } => true,
        }
    }

    /// Refuses fields past their limits, with the code a client of this endpoint expects.
    pub fn check(&self) -> Result<(), Refusal> {
        match self {
            Self::Register { client_id, .. } => {
                let chars = client_id.as_str().chars().count();
                if chars == 0 || chars > MAX_CLIENT_ID_CHARS {
                    return Err((
                        ErrorCode::InvalidMessage,
                        "clientId must have 1 to 128 characters",
                    ));
                }
            }
            Self::Join { code, .. } if code.len() > MAX_CODE_INPUT_BYTES => {
                return Err((ErrorCode::InvalidCode, "that is not a pairing code"));
            }
            Self::Resume { session_id, .. } if session_id.len() > MAX_CODE_INPUT_BYTES => {
                return Err((ErrorCode::InvalidCode, "no such session, or it has ended"));
            }
            _ => {}
        }
        Ok(())
    }
}

/// What the relay sends on `/mac` and `/browser` (besides [`super::Common`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
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
    /// Lossless mode: "I have everything of yours up to `seq`" (every such message is
    /// queued, held or kept for your partner).
    Ack {
        /// The last of the side's `data` the relay has.
        seq: u64,
    },
    // The partner's bytes, `{"type":"data","payload":"…"}`, are built by [`data_frame`]
    // without a round trip through serde.
}

/// A `register`, `join` or `resume` as JSON again (`None` for any other request): what a
/// node passes on when it tunnels the side to the node that holds its code or pairing.
pub fn attempt_text(request: &PairingRequest<'_>) -> Option<Vec<u8>> {
    #[derive(Serialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum Attempt<'a> {
        Register {
            #[serde(rename = "clientId")]
            client_id: &'a str,
            ack: bool,
            #[serde(rename = "lastSeq", skip_serializing_if = "Option::is_none")]
            last_seq: Option<u64>,
        },
        Join {
            code: &'a str,
            ack: bool,
        },
        Resume {
            #[serde(rename = "sessionId")]
            session_id: &'a str,
            ack: bool,
            #[serde(rename = "lastSeq", skip_serializing_if = "Option::is_none")]
            last_seq: Option<u64>,
        },
    }
    let attempt = match request {
        PairingRequest::Register {
            client_id,
            ack,
            last_seq,
        } => Attempt::Register {
            client_id: client_id.as_str(),
            ack: *ack,
            last_seq: *last_seq,
        },
        PairingRequest::Join { code, ack } => Attempt::Join { code, ack: *ack },
        PairingRequest::Resume {
            session_id,
            ack,
            last_seq,
        } => Attempt::Resume {
            session_id,
            ack: *ack,
            last_seq: *last_seq,
        },
        _ => return None,
    };
    // unwrap: strings, bools and numbers always serialize.
    Some(serde_json::to_vec(&attempt).unwrap())
}

/// Parses one `/mac` or `/browser` message; every failure is `INVALID_MESSAGE`.
///
/// The data path first: a plain `{"type":"data","payload":"…"}` whose payload is written
/// the way serde writes strings is read without serde, its payload kept as JSON text.
/// Everything else — other messages, other spellings, extra fields, errors — goes through
/// serde, with the same result as ever.
pub fn parse(bytes: &[u8]) -> Result<PairingRequest<'_>, String> {
    if let Some(data) = fast_data(bytes) {
        return Ok(data);
    }
    super::parse(bytes).map_err(|err| err.describe().to_owned())
}

fn fast_data(bytes: &[u8]) -> Option<PairingRequest<'_>> {
    let fields = json::flat_object(std::str::from_utf8(bytes).ok()?)?;
    let is_data =
        fields.str("type")?.as_json() == "data" && fields.only(&["type", "payload", "seq"]);
    if !is_data {
        return None;
    }
    let seq = match fields.get("seq") {
        None => None,
        Some(json::Value::Uint(seq)) => Some(seq),
        Some(_) => return None,
    };
    Some(PairingRequest::Data {
        payload: Text::Json(fields.str("payload")?),
        seq,
    })
}

/// `{"type":"data","payload":"…"}` (and `,"seq":n` in lossless mode), to the partner: the
/// payload exactly as its sender wrote it when that is how serde would write it,
/// otherwise re-encoded.
pub fn data_frame(payload: &Text<'_>, seq: Option<u64>) -> Bytes {
    const HEAD: &[u8] = br#"{"type":"data","payload":""#;
    const SEQ: &[u8] = br#"","seq":"#;
    const TAIL: &[u8] = br#""}"#;
    let mut digits = itoa::Buffer::new();
    let seq = seq.map(|seq| digits.format(seq).as_bytes());
    let len =
        HEAD.len() + payload.json_len() + seq.map_or(TAIL.len(), |seq| SEQ.len() + seq.len() + 1);
    text_frame_of(len, |out| {
        out.extend_from_slice(HEAD);
        payload.write_json(out);
        match seq {
            Some(seq) => {
                out.extend_from_slice(SEQ);
                out.extend_from_slice(seq);
                out.push(b'}');
            }
            None => out.extend_from_slice(TAIL),
        }
    })
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
        let frame = serde_json::to_string(&PairingEvent::Joined { session_id: "s" }).unwrap();
        assert_eq!(frame, r#"{"type":"joined","sessionId":"s"}"#);
    }

    #[test]
    fn an_attempt_re_encoded_parses_back_to_itself() {
        for text in [
            r#"{"type":"register","clientId":"c-1","ack":true,"lastSeq":7}"#,
            r#"{"type":"register","clientId":"c-\"1","ack":false}"#,
            r#"{"type":"join","code":" h4f7kn ","ack":false}"#,
            r#"{"type":"resume","sessionId":"s","ack":true,"lastSeq":0}"#,
            r#"{"type":"resume","sessionId":"s","ack":false}"#,
        ] {
            let request = parse(text.as_bytes()).unwrap();
            let again = attempt_text(&request).unwrap();
            assert_eq!(std::str::from_utf8(&again).unwrap(), text);
        }
        let ping = parse(br#"{"type":"ping","ts":1}"#).unwrap();
        assert!(attempt_text(&ping).is_none());
    }

    #[test]
    fn data_payloads_written_as_serde_writes_them_stay_json_text() {
        for text in [
            r#"{"type":"data","payload":"plain"}"#,
            r#"{"type":"data","payload":"esc\u001b[0m\r\n"}"#,
            r#" { "payload" : "x" , "type" : "data" } "#,
        ] {
            match parse(text.as_bytes()).unwrap() {
                PairingRequest::Data { payload, .. } => assert!(matches!(payload, Text::Json(_))),
                other => panic!("{other:?}"),
            }
        }
        // Another spelling, or an extra field: serde decides, and the value is the same.
        for text in [
            r#"{"type":"data","payload":"\u0041"}"#,
            r#"{"type":"data","payload":"A","extra":1}"#,
        ] {
            match parse(text.as_bytes()).unwrap() {
                PairingRequest::Data { payload, .. } => assert_eq!(payload.value(), "A"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_data_frame_is_what_serde_would_write() {
        for payload in ["", "plain", "esc\u{1b}[0m \" \\ \u{7f} ✓", "\u{0}\u{1f}"] {
            // What serde writes for `PairingEvent`-style internally tagged data.
            let fast = format!(
                r#"{{"type":"data","payload":{}}}"#,
                serde_json::to_string(payload).unwrap()
            );
            for text in [Text::Value(payload.into()), {
                let PairingRequest::Data { payload, .. } = parse(fast.as_bytes()).unwrap() else {
                    panic!("not data")
                };
                payload
            }] {
                let frame = data_frame(&text, None);
                let body = &frame[crate::transport::header_len(fast.len())..];
                assert_eq!(std::str::from_utf8(body).unwrap(), fast);
            }
        }
    }

    #[test]
    fn bad_input_is_described_without_echoing_it() {
        assert_eq!(
            parse(b"{not json").unwrap_err(),
            "message is not valid JSON"
        );
        let err = parse(br#"{"type":"join"}"#).unwrap_err();
        assert!(err.contains("missing field `code`"), "{err}");
        let err = parse(br#"{"type":"teleport"}"#).unwrap_err();
        assert!(err.contains("unknown variant"), "{err}");
    }

    #[test]
    fn limits_are_checked_with_the_code_each_endpoint_expects() {
        let long = "A".repeat(MAX_CODE_INPUT_BYTES + 1);
        let join = PairingRequest::Join {
            code: long.clone(),
            ack: false,
        };
        assert_eq!(join.check().unwrap_err().0, ErrorCode::InvalidCode);
        let resume = PairingRequest::Resume {
            session_id: long,
            ack: false,
            last_seq: None,
        };
        assert_eq!(resume.check().unwrap_err().0, ErrorCode::InvalidCode);
        let register = PairingRequest::Register {
            client_id: "".into(),
            ack: false,
            last_seq: None,
        };
        assert_eq!(register.check().unwrap_err().0, ErrorCode::InvalidMessage);
        assert!(!register.allowed_for(Role::Browser));
    }
}
