//! Agents and clients on `/ws/agent` and `/ws/client` (PROTOCOL.md §3).
//!
//! Events the registry composes ahead of time (session lists, status changes) own their
//! fields through `Cow`, so the registry's effects carry the very wire type that is sent.
//! `data` — the same shape both ways, `{"type":"data","sessionId","data"}` — is read by
//! [`parse_agent`] / [`parse_client`] and written by [`data_frame`] without a round trip
//! through serde.

use std::borrow::Cow;

use bytes::Bytes;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Number;

use super::json::{self, Text};
use super::{ErrorCode, MachineInfo, ParseError, Refusal, SessionInfo, UserInfo};
use super::{MAX_COMMAND_BYTES, MAX_ID_BYTES, MAX_SESSION_NAME_BYTES};
use crate::ids::{ClientKey, ConnId, MachineId, SessionId};
use crate::transport::text_frame_of;

/// Refusal for an id too long to name one of the user's machines: exactly what the
/// registry answers for a machine that is not the user's.
const NO_MACHINE: Refusal = (ErrorCode::MachineNotFound, "no such machine online");
/// Refusal for input to a session id too long to be attached.
const NOT_ATTACHED: Refusal = (ErrorCode::NotAttached, "not attached to that session");

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
        /// Lossless mode: opt in to sequence numbers and acknowledgements.
        #[serde(default)]
        ack: bool,
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
        session_id: SessionId,
    },
    /// Terminal output for every client attached to the session.
    Data {
        /// Which session.
        #[serde(rename = "sessionId", borrow)]
        session_id: Text<'a>,
        /// Opaque to the relay.
        #[serde(borrow)]
        data: Text<'a>,
        /// Lossless mode: this message's number among the agent's output for the session.
        #[serde(default)]
        seq: Option<u64>,
    },
    /// Lossless mode: "I have all input for this session up to `seq`".
    Ack {
        /// Which session.
        #[serde(rename = "sessionId")]
        session_id: SessionId,
        /// The last input `seq` received.
        seq: u64,
    },
    /// Lossless mode, after coming back: "I received input for this session up to
    /// `lastSeq`"; answered with `ack` (its output the relay has) and the input it missed.
    Resume {
        /// Which session.
        #[serde(rename = "sessionId")]
        session_id: SessionId,
        /// The last input `seq` received.
        #[serde(rename = "lastSeq")]
        last_seq: u64,
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

impl AgentRequest<'_> {
    /// Refuses session reports whose fields pass their limits.
    pub fn check(&self) -> Result<(), Refusal> {
        match self {
            Self::Sessions { sessions } => sessions.iter().try_for_each(SessionInfo::check),
            Self::SessionStarted { session } => session.check(),
            _ => Ok(()),
        }
    }
}

fn display<T: std::fmt::Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

/// What the relay sends on `/ws/agent` (besides [`super::Common`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentEvent<'a> {
    /// The answer to `register`.
    Registered {
        /// Whether the token was accepted.
        success: bool,
        /// The machine, on success.
        #[serde(rename = "machineId", skip_serializing_if = "Option::is_none")]
        machine_id: Option<&'a MachineId>,
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
        session_id: &'a SessionId,
        /// The client's connection id, as text.
        #[serde(rename = "clientId", serialize_with = "display")]
        client_id: ConnId,
    },
    /// A client detached (or left).
    Detach {
        /// The session.
        #[serde(rename = "sessionId")]
        session_id: &'a SessionId,
        /// The client's connection id, as text.
        #[serde(rename = "clientId", serialize_with = "display")]
        client_id: ConnId,
    },
    /// A client asked for a new session.
    StartSession {
        /// Its name.
        name: Cow<'a, str>,
        /// What to run.
        command: Cow<'a, str>,
    },
    // Keystrokes from an attached client, `{"type":"data","sessionId","data"}`: see
    // [`data_frame`].
    /// Lossless mode: "I have your output for this session up to `seq`".
    Ack {
        /// The session.
        #[serde(rename = "sessionId")]
        session_id: &'a SessionId,
        /// The last of its output the relay has.
        seq: u64,
    },
    /// A client's terminal size.
    Resize {
        /// The session.
        #[serde(rename = "sessionId")]
        session_id: &'a SessionId,
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
        /// Lossless mode: opt in to sequence numbers and acknowledgements.
        #[serde(default)]
        ack: bool,
        /// Lossless mode: a random UUID the client keeps across reconnects; a new
        /// connection with the same one takes the old one's place and its attachments.
        #[serde(rename = "clientId", default)]
        client_id: Option<ClientKey>,
    },
    /// The user's machines.
    ListMachines,
    /// The sessions of one of the user's machines.
    ListSessions {
        /// Which machine.
        #[serde(rename = "machineId")]
        machine_id: MachineId,
    },
    /// Start receiving a session's output.
    Attach {
        /// Which machine.
        #[serde(rename = "machineId")]
        machine_id: MachineId,
        /// Which session.
        #[serde(rename = "sessionId")]
        session_id: SessionId,
        /// Lossless mode, after coming back: the last output `seq` received.
        #[serde(rename = "lastSeq", default)]
        last_seq: Option<u64>,
    },
    /// Stop receiving it.
    Detach {
        /// Which session.
        #[serde(rename = "sessionId")]
        session_id: SessionId,
    },
    /// Ask the machine's agent for a new session.
    CreateSession {
        /// Which machine.
        #[serde(rename = "machineId")]
        machine_id: MachineId,
        /// Its name; at most [`MAX_SESSION_NAME_BYTES`].
        name: String,
        /// What to run; at most [`MAX_COMMAND_BYTES`].
        command: String,
    },
    /// Keystrokes for an attached session.
    Data {
        /// Which session.
        #[serde(rename = "sessionId", borrow)]
        session_id: Text<'a>,
        /// Opaque.
        #[serde(borrow)]
        data: Text<'a>,
        /// Lossless mode: this message's number among the client's input for the session.
        #[serde(default)]
        seq: Option<u64>,
    },
    /// Lossless mode: "I have this session's output up to `seq`".
    Ack {
        /// Which session.
        #[serde(rename = "sessionId")]
        session_id: SessionId,
        /// The last output `seq` received.
        seq: u64,
    },
    /// Terminal size of an attached session.
    Resize {
        /// Which session.
        #[serde(rename = "sessionId")]
        session_id: SessionId,
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

impl ClientRequest<'_> {
    /// Refuses fields past their limits with the answer the relay would give for an id that
    /// names nothing of this user's: an id longer than [`MAX_ID_BYTES`] cannot exist.
    pub fn check(&self) -> Result<(), Refusal> {
        let long = |id: &str| id.len() > MAX_ID_BYTES;
        match self {
            Self::ListSessions { machine_id } if long(machine_id.as_str()) => Err(NO_MACHINE),
            Self::Attach { machine_id, .. } if long(machine_id.as_str()) => Err(NO_MACHINE),
            Self::Attach { session_id, .. } if long(session_id.as_str()) => Err((
                ErrorCode::SessionNotFound,
                "no such session on that machine",
            )),
            Self::Detach { session_id }
            | Self::Resize { session_id, .. }
            | Self::Ack { session_id, .. }
                if long(session_id.as_str()) =>
            {
                Err(NOT_ATTACHED)
            }
            Self::Data { session_id, .. } if long(&session_id.value()) => Err(NOT_ATTACHED),
            Self::CreateSession { name, command, .. }
                if name.len() > MAX_SESSION_NAME_BYTES || command.len() > MAX_COMMAND_BYTES =>
            {
                Err((ErrorCode::InvalidMessage, "name or command is too long"))
            }
            Self::CreateSession { machine_id, .. } if long(machine_id.as_str()) => Err(NO_MACHINE),
            _ => Ok(()),
        }
    }
}

/// What the relay sends on `/ws/client` (besides [`super::Common`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientEvent<'a> {
    /// The answer to a good `auth`.
    Authenticated {
        /// Who.
        user: &'a UserInfo,
    },
    /// The answer to `list_machines`.
    Machines {
        /// The user's machines.
        machines: &'a [MachineInfo],
    },
    /// The answer to `list_sessions`.
    Sessions {
        /// Which machine.
        #[serde(rename = "machineId")]
        machine_id: Cow<'a, MachineId>,
        /// Its sessions.
        sessions: Cow<'a, [SessionInfo]>,
    },
    /// The answer to `attach`.
    Attached {
        /// The session.
        #[serde(rename = "sessionId")]
        session_id: Cow<'a, SessionId>,
        /// Lossless mode only: whether this continues an attachment the client had (its
        /// numbering goes on) or starts a new one (numbering starts at 1).
        #[serde(skip_serializing_if = "Option::is_none")]
        resumed: Option<bool>,
    },
    /// Lossless mode: "I have your input for this session up to `seq`".
    Ack {
        /// The session.
        #[serde(rename = "sessionId")]
        session_id: Cow<'a, SessionId>,
        /// The last of the client's input the relay has.
        seq: u64,
    },
    /// The answer to `detach`.
    Detached {
        /// The session.
        #[serde(rename = "sessionId")]
        session_id: Cow<'a, SessionId>,
    },
    /// A session began on one of the user's machines.
    SessionStarted {
        /// Which machine.
        #[serde(rename = "machineId")]
        machine_id: Cow<'a, MachineId>,
        /// The session.
        session: Cow<'a, SessionInfo>,
    },
    /// A session ended (the client is detached from it).
    SessionEnded {
        /// Which machine.
        #[serde(rename = "machineId")]
        machine_id: Cow<'a, MachineId>,
        /// Which session.
        #[serde(rename = "sessionId")]
        session_id: Cow<'a, SessionId>,
    },
    /// One of the user's machines came online or went offline.
    MachineStatus {
        /// Which machine.
        #[serde(rename = "machineId")]
        machine_id: Cow<'a, MachineId>,
        /// Now online?
        online: bool,
    },
    // Terminal output of an attached session, `{"type":"data","sessionId","data"}`: see
    // [`data_frame`].
}

/// `{"type":"data","sessionId":"…","data":"…"}` (and `,"seq":n` in lossless mode) —
/// output to a client or input to an agent. Both fields exactly as their sender wrote them
/// when that is how serde would write them.
pub fn data_frame(session_id: &Text<'_>, data: &Text<'_>, seq: Option<u64>) -> Bytes {
    const HEAD: &[u8] = br#"{"type":"data","sessionId":""#;
    const MIDDLE: &[u8] = br#"","data":""#;
    const SEQ: &[u8] = br#"","seq":"#;
    const TAIL: &[u8] = br#""}"#;
    let mut digits = itoa::Buffer::new();
    let seq = seq.map(|seq| digits.format(seq).as_bytes());
    let len = HEAD.len()
        + session_id.json_len()
        + MIDDLE.len()
        + data.json_len()
        + seq.map_or(TAIL.len(), |seq| SEQ.len() + seq.len() + 1);
    text_frame_of(len, |out| {
        out.extend_from_slice(HEAD);
        session_id.write_json(out);
        out.extend_from_slice(MIDDLE);
        data.write_json(out);
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

/// A plain `{"type":"data","sessionId":"…","data":"…"}` (with `"seq"` in lossless mode),
/// read without serde.
fn fast_data(bytes: &[u8]) -> Option<(Text<'_>, Text<'_>, Option<u64>)> {
    let fields = json::flat_object(std::str::from_utf8(bytes).ok()?)?;
    let is_data = fields.str("type")?.as_json() == "data"
        && fields.only(&["type", "sessionId", "data", "seq"]);
    if !is_data {
        return None;
    }
    let seq = match fields.get("seq") {
        None => None,
        Some(json::Value::Uint(seq)) => Some(seq),
        Some(_) => return None,
    };
    Some((
        Text::Json(fields.str("sessionId")?),
        Text::Json(fields.str("data")?),
        seq,
    ))
}

/// An agent's `register` as JSON again: what its node passes on when it tunnels the agent
/// to the node of its user (`relay::account::remote`).
pub fn register_text(token: &str, machine_name: Option<&str>, ack: bool) -> Vec<u8> {
    #[derive(Serialize)]
    struct Register<'a> {
        r#type: &'static str,
        token: &'a str,
        #[serde(rename = "machineName", skip_serializing_if = "Option::is_none")]
        machine_name: Option<&'a str>,
        ack: bool,
    }
    let register = Register {
        r#type: "register",
        token,
        machine_name,
        ack,
    };
    // unwrap: strings and a bool always serialize.
    serde_json::to_vec(&register).unwrap()
}

/// A client's `auth` as JSON again (see [`register_text`]).
pub fn auth_text(token: &str, ack: bool, client_id: Option<&ClientKey>) -> Vec<u8> {
    #[derive(Serialize)]
    struct Auth<'a> {
        r#type: &'static str,
        token: &'a str,
        ack: bool,
        #[serde(rename = "clientId", skip_serializing_if = "Option::is_none")]
        client_id: Option<&'a str>,
    }
    let auth = Auth {
        r#type: "auth",
        token,
        ack,
        client_id: client_id.map(ClientKey::as_str),
    };
    // unwrap: strings and a bool always serialize.
    serde_json::to_vec(&auth).unwrap()
}

/// Parses one `/ws/agent` message: `data` on the fast path, the rest through serde.
pub fn parse_agent(bytes: &[u8]) -> Result<AgentRequest<'_>, ParseError> {
    match fast_data(bytes) {
        Some((session_id, data, seq)) => Ok(AgentRequest::Data {
            session_id,
            data,
            seq,
        }),
        None => super::parse(bytes),
    }
}

/// Parses one `/ws/client` message: `data` on the fast path, the rest through serde.
pub fn parse_client(bytes: &[u8]) -> Result<ClientRequest<'_>, ParseError> {
    match fast_data(bytes) {
        Some((session_id, data, seq)) => Ok(ClientRequest::Data {
            session_id,
            data,
            seq,
        }),
        None => super::parse(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    #[test]
    fn a_register_or_an_auth_re_encoded_parses_back_to_what_was_sent() {
        let text = register_text("hmt_x\"y", Some("mac"), true);
        match parse_agent(&text).unwrap() {
            AgentRequest::Register {
                token,
                machine_name,
                ack,
            } => assert_eq!(
                (token.as_str(), machine_name.as_deref(), ack),
                ("hmt_x\"y", Some("mac"), true)
            ),
            other => panic!("{other:?}"),
        }
        let key = ClientKey::from("5f0c1e0e-8a4e-4c55-9d55-2f4b8f3a9b10");
        let text = auth_text("t", true, Some(&key));
        match parse_client(&text).unwrap() {
            ClientRequest::Auth {
                token,
                ack,
                client_id,
            } => assert_eq!((token.as_str(), ack, client_id), ("t", true, Some(key))),
            other => panic!("{other:?}"),
        }
        let text = auth_text("t", false, None);
        assert_eq!(
            std::str::from_utf8(&text).unwrap(),
            r#"{"type":"auth","token":"t","ack":false}"#
        );
    }

    #[test]
    fn agent_events_serialise_with_the_exact_wire_names() {
        let id = MachineId::from("m1");
        let ok = AgentEvent::Registered {
            success: true,
            machine_id: Some(&id),
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
        let session = SessionId::from("s1");
        assert_eq!(
            serde_json::to_string(&AgentEvent::Attach {
                session_id: &session,
                client_id: ConnId::from(7),
            })
            .unwrap(),
            r#"{"type":"attach","sessionId":"s1","clientId":"7"}"#
        );
        assert_eq!(
            serde_json::to_string(&AgentEvent::StartSession {
                name: "n".into(),
                command: "c".into()
            })
            .unwrap(),
            r#"{"type":"start_session","name":"n","command":"c"}"#
        );
    }

    #[test]
    fn data_takes_the_fast_path_both_ways_and_frames_like_serde() {
        let text = br#"{"type":"data","sessionId":"s1","data":"\u001b[1mls\r\n"}"#;
        let (session_id, data) = match parse_agent(text).unwrap() {
            AgentRequest::Data {
                session_id, data, ..
            } => (session_id, data),
            other => panic!("{other:?}"),
        };
        assert!(matches!(data, Text::Json(_)));
        assert_eq!(session_id.value(), "s1");
        let frame = data_frame(&session_id, &data, None);
        let body = &frame[crate::transport::header_len(text.len())..];
        assert_eq!(body, &text[..]);
        assert!(matches!(
            parse_client(text).unwrap(),
            ClientRequest::Data { .. }
        ));
        // Not plain: serde reads it, to the same values.
        let odd = br#"{"type":"data","sessionId":"s1","data":"\/x"}"#;
        match parse_client(odd).unwrap() {
            ClientRequest::Data { data, .. } => assert_eq!(data.value(), "/x"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn not_json_and_not_a_message_are_told_apart() {
        assert!(matches!(
            parse::<ClientRequest>(b"{oops"),
            Err(super::super::ParseError::Json)
        ));
        assert!(matches!(
            parse::<ClientRequest>(br#"{"type":"attach"}"#),
            Err(super::super::ParseError::Message(_))
        ));
    }

    #[test]
    fn over_long_ids_get_the_answer_the_registry_would_give() {
        let long = "x".repeat(MAX_ID_BYTES + 1);
        let detach = ClientRequest::Detach {
            session_id: long.as_str().into(),
        };
        assert_eq!(detach.check().unwrap_err().0, ErrorCode::NotAttached);
        let list = ClientRequest::ListSessions {
            machine_id: long.as_str().into(),
        };
        assert_eq!(list.check().unwrap_err().0, ErrorCode::MachineNotFound);
        let data = ClientRequest::Data {
            session_id: Text::Value(long.as_str().into()),
            data: Text::Value("x".into()),
            seq: None,
        };
        assert_eq!(data.check().unwrap_err().0, ErrorCode::NotAttached);
    }
}
