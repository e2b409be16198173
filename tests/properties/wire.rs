//! The wire messages of every endpoint: any bytes never panic; valid messages come back as
//! sent; the borrowed fast `data` path agrees with serde on the crate's own types, and the
//! frame it forwards is byte for byte the one serde's value would give.

use hermit_relay::ids::Role;
use hermit_relay::relay::protocol::account::{self, AgentRequest, ClientRequest};
use hermit_relay::relay::protocol::json::Text;
use hermit_relay::relay::protocol::pairing::{self, PairingRequest};
use hermit_relay::relay::protocol::{self as wire};
use hermit_relay::transport::header_len;
use proptest::prelude::*;
use serde_json::{json, Value};

use super::json_text::{data_message, tricky_string};

/// The JSON text of a WebSocket text frame the relay built.
fn body(frame: &[u8]) -> &[u8] {
    let header = [2, 4, 10]
        .into_iter()
        .find(|h| header_len(frame.len() - h) == *h)
        .unwrap();
    &frame[header..]
}

/// Every parser, and what the relay does next with a message that parsed.
fn parse_all(bytes: &[u8]) {
    if let Ok(request) = pairing::parse(bytes) {
        let _ = (
            request.check(),
            request.kind(),
            request.allowed_for(Role::Mac),
        );
    }
    if let Ok(AgentRequest::Data {
        session_id,
        data,
        seq,
    }) = account::parse_agent(bytes)
    {
        let _ = account::data_frame(&session_id, &data, seq);
    }
    if let Ok(request) = account::parse_client(bytes) {
        let _ = request.check();
    }
    if let Err(err) = wire::parse::<AgentRequest>(bytes) {
        let _ = err.account_error();
    }
}

/// `Some((fields, seq))` for a `data` request, `Err` text for a refusal, `None` otherwise.
type Outcome = Result<Option<(Vec<String>, Option<u64>)>, ()>;

fn pairing_outcome(parsed: Result<PairingRequest<'_>, ()>) -> Outcome {
    parsed.map(|request| match request {
        PairingRequest::Data { payload, seq } => Some((vec![payload.value().into_owned()], seq)),
        _ => None,
    })
}

fn agent_outcome(parsed: Result<AgentRequest<'_>, ()>) -> Outcome {
    parsed.map(|request| match request {
        AgentRequest::Data {
            session_id,
            data,
            seq,
        } => Some((
            vec![session_id.value().into_owned(), data.value().into_owned()],
            seq,
        )),
        _ => None,
    })
}

fn client_outcome(parsed: Result<ClientRequest<'_>, ()>) -> Outcome {
    parsed.map(|request| match request {
        ClientRequest::Data {
            session_id,
            data,
            seq,
        } => Some((
            vec![session_id.value().into_owned(), data.value().into_owned()],
            seq,
        )),
        _ => None,
    })
}

/// The frame a pairing `data` would be forwarded as.
fn pairing_frame(parsed: Result<PairingRequest<'_>, impl Sized>) -> Option<Vec<u8>> {
    match parsed {
        Ok(PairingRequest::Data { payload, seq }) => {
            Some(pairing::data_frame(&payload, seq).to_vec())
        }
        _ => None,
    }
}

fn agent_frame(parsed: Result<AgentRequest<'_>, impl Sized>) -> Option<Vec<u8>> {
    match parsed {
        Ok(AgentRequest::Data {
            session_id,
            data,
            seq,
        }) => Some(account::data_frame(&session_id, &data, seq).to_vec()),
        _ => None,
    }
}

proptest! {
    #[test]
    fn any_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        parse_all(&bytes);
    }

    #[test]
    fn any_text_never_panics(text in any::<String>()) {
        parse_all(text.as_bytes());
    }

    #[test]
    fn messages_shaped_like_data_never_panic(
        text in prop_oneof![data_message(&["payload"]), data_message(&["sessionId", "data"])]
    ) {
        parse_all(text.as_bytes());
    }

    #[test]
    fn the_fast_pairing_data_path_agrees_with_serde(text in data_message(&["payload"])) {
        let bytes = text.as_bytes();
        let fast = pairing_outcome(pairing::parse(bytes).map_err(drop));
        let serde = pairing_outcome(wire::parse::<PairingRequest>(bytes).map_err(drop));
        prop_assert_eq!(&fast, &serde, "{}", text);
        prop_assert_eq!(
            pairing_frame(pairing::parse(bytes)),
            pairing_frame(wire::parse::<PairingRequest>(bytes))
        );
    }

    #[test]
    fn the_fast_account_data_path_agrees_with_serde(
        text in data_message(&["sessionId", "data"])
    ) {
        let bytes = text.as_bytes();
        let agent = agent_outcome(account::parse_agent(bytes).map_err(drop));
        prop_assert_eq!(&agent, &agent_outcome(wire::parse(bytes).map_err(drop)), "{}", text);
        let client = client_outcome(account::parse_client(bytes).map_err(drop));
        prop_assert_eq!(&client, &client_outcome(wire::parse(bytes).map_err(drop)), "{}", text);
        prop_assert_eq!(agent_frame(account::parse_agent(bytes)), agent_frame(wire::parse(bytes)));
    }

    #[test]
    fn a_forwarded_frame_reads_back_as_what_was_sent(
        session in tricky_string(), data in tricky_string(), seq in prop::option::of(any::<u64>()),
    ) {
        let frame = pairing::data_frame(&Text::Value(data.as_str().into()), seq);
        let parsed = pairing_outcome(pairing::parse(body(&frame)).map_err(drop));
        prop_assert_eq!(parsed, Ok(Some((vec![data.clone()], seq))));
        let frame = account::data_frame(&Text::Value(session.as_str().into()), &Text::Value(data.as_str().into()), seq);
        let parsed = client_outcome(account::parse_client(body(&frame)).map_err(drop));
        prop_assert_eq!(parsed, Ok(Some((vec![session.clone(), data.clone()], seq))));
        // What the relay writes is what serde_json would read: plain JSON, nothing else.
        let value: Value = serde_json::from_slice(body(&frame)).unwrap();
        prop_assert_eq!(value["data"].as_str(), Some(data.as_str()));
    }

    #[test]
    fn valid_requests_of_every_kind_come_back_as_sent(
        (a, b, c) in (tricky_string(), tricky_string(), tricky_string()),
        (n, ack, opt) in (any::<u64>(), any::<bool>(), prop::option::of(any::<u64>())),
        (cols, rows) in (any::<u16>(), any::<u16>()),
    ) {
        let session = json!({"id": a, "name": b, "command": c, "createdAt": "2026-11-30T12:00:00Z"});
        let pairing = [
            ("Register", json!({"type": "register", "clientId": a, "ack": ack, "lastSeq": opt})),
            ("Join", json!({"type": "join", "code": a, "ack": ack})),
            ("Resume", json!({"type": "resume", "sessionId": a, "ack": ack, "lastSeq": opt})),
            ("Data", json!({"type": "data", "payload": a, "seq": opt})),
            ("Ack", json!({"type": "ack", "seq": n})),
            ("Ping", json!({"type": "ping", "ts": n})),
            ("Pong", json!({"type": "pong", "ts": opt})),
        ];
        for (name, message) in pairing {
            let text = message.to_string();
            let request = pairing::parse(text.as_bytes()).map_err(TestCaseError::fail)?;
            came_back(name, &format!("{request:?}"), &message)?;
        }
        let agent = [
            ("Register", json!({"type": "register", "token": a, "machineName": b, "ack": ack})),
            ("Sessions", json!({"type": "sessions", "sessions": [session.clone()]})),
            ("SessionStarted", json!({"type": "session_started", "session": session})),
            ("SessionEnded", json!({"type": "session_ended", "sessionId": a})),
            ("Data", json!({"type": "data", "sessionId": a, "data": b, "seq": opt})),
            ("Ack", json!({"type": "ack", "sessionId": a, "seq": n})),
            ("Resume", json!({"type": "resume", "sessionId": a, "lastSeq": n})),
        ];
        for (name, message) in agent {
            let text = message.to_string();
            let request = account::parse_agent(text.as_bytes()).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            came_back(name, &format!("{request:?}"), &message)?;
        }
        let client = [
            ("Auth", json!({"type": "auth", "token": a, "ack": ack, "clientId": b})),
            ("ListMachines", json!({"type": "list_machines"})),
            ("ListSessions", json!({"type": "list_sessions", "machineId": a})),
            ("Attach", json!({"type": "attach", "machineId": a, "sessionId": b, "lastSeq": opt})),
            ("Detach", json!({"type": "detach", "sessionId": a})),
            ("CreateSession", json!({"type": "create_session", "machineId": a, "name": b, "command": c})),
            ("Data", json!({"type": "data", "sessionId": a, "data": b, "seq": opt})),
            ("Resize", json!({"type": "resize", "sessionId": a, "cols": cols, "rows": rows})),
        ];
        for (name, message) in client {
            let text = message.to_string();
            let request = account::parse_client(text.as_bytes()).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            came_back(name, &format!("{request:?}"), &message)?;
        }
    }
}

/// The parsed request (its `Debug` text) is the variant `name` and holds every string and
/// number of `message`: the request types are `Deserialize` only, so their `Debug` text is
/// what there is to compare.
fn came_back(name: &str, parsed: &str, message: &Value) -> Result<(), TestCaseError> {
    prop_assert!(parsed.starts_with(name), "{} parsed as {}", message, parsed);
    if name == "Data" {
        // Its strings may be kept as JSON text; the data properties above read them back.
        return Ok(());
    }
    let fields = message.as_object().into_iter().flatten();
    for value in fields
        .filter(|(key, _)| *key != "type")
        .map(|(_, value)| value)
    {
        let shown = match value {
            Value::String(s) => format!("{s:?}"),
            Value::Number(n) => n.to_string(),
            Value::Object(_) | Value::Array(_) => {
                for field in ["id", "name", "command"] {
                    let inner = value
                        .pointer(&format!("/{field}"))
                        .or(value.pointer(&format!("/0/{field}")));
                    let inner = format!("{:?}", inner.and_then(Value::as_str).unwrap_or(""));
                    prop_assert!(
                        parsed.contains(&inner),
                        "{} lost {} in {}",
                        name,
                        inner,
                        parsed
                    );
                }
                continue;
            }
            _ => continue,
        };
        prop_assert!(
            parsed.contains(&shown),
            "{} lost {} in {}",
            name,
            shown,
            parsed
        );
    }
    Ok(())
}
