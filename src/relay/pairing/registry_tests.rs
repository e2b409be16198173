//! The registry actor without sockets: its timer work does not grow with what it holds.

use super::*;
use crate::relay::pairing::code::CodeFormat;
use crate::transport::Outbox;
use std::time::Duration;

/// Stands in for a connection actor: takes every command and does nothing.
struct Sink;

impl Actor for Sink {
    type Context = Context<Self>;
}

impl Handler<ToConn> for Sink {
    type Result = ();

    fn handle(&mut self, _: ToConn, _: &mut Context<Self>) {}
}

/// Stands in for a connection actor and reports every command it is sent.
struct Recorder(tokio::sync::mpsc::UnboundedSender<ToConn>);

impl Actor for Recorder {
    type Context = Context<Self>;
}

impl Handler<ToConn> for Recorder {
    type Result = ();

    fn handle(&mut self, msg: ToConn, _: &mut Context<Self>) {
        let _ = self.0.send(msg);
    }
}

fn limits() -> StreamLimits {
    StreamLimits {
        hold: 1 << 20,
        window: 1 << 20,
    }
}

fn rules() -> PairingRules {
    PairingRules {
        format: CodeFormat::new("346789ABCDEFGHJKLMNPQRTUVWXY", 6),
        code_ttl: Duration::from_secs(300),
        resume_grace: Duration::from_secs(30),
        retired_code_memory: Duration::from_secs(900),
        max_pending_codes: 100_000,
    }
}

/// Connects `n` macs, each waiting with a code.
async fn macs(registry: &Addr<SessionRegistry>, n: u64) {
    let sink = Sink.start().recipient();
    for _ in 0..n {
        let peer = Peer::new(ConnId::next(), sink.clone(), Outbox::new(1 << 20));
        registry
            .send(Connect {
                role: Role::Mac,
                peer,
                slot: PairingSlot::default(),
                code: true,
            })
            .await
            .unwrap();
    }
}

/// Timer polls per message while the registry handles `messages` joins.
async fn polls_per_message(waiting: u64, messages: u64) -> f64 {
    let registry = SessionRegistry::new(rules(), limits()).start();
    macs(&registry, waiting).await;
    let before = registry.send(Stats).await.unwrap();
    assert_eq!(before.deadlines, waiting as usize);
    assert_eq!(before.timers_armed, 1, "one timer however many deadlines");
    let browser = ConnId::next();
    for _ in 0..messages {
        let join = Join {
            conn: browser,
            code: "AAAAAA".into(),
            lossless: Lossless::default(),
            failure: None,
            cut_off: false,
        };
        registry.send(join).await.unwrap();
    }
    let after = registry.send(Stats).await.unwrap();
    assert_eq!(after.messages - before.messages, messages);
    (after.timer_polls - before.timer_polls) as f64 / messages as f64
}

#[actix_rt::test]
async fn timer_work_per_message_does_not_grow_with_pending_deadlines() {
    let few = polls_per_message(10, 500).await;
    let many = polls_per_message(10_000, 500).await;
    // One armed timer is polled at most once per wake-up, whatever the registry holds.
    // (With a timer per code, `many` was ~10,000.)
    assert!(few <= 2.0, "{few} polls per message with 10 codes waiting");
    assert!(
        many <= 2.0,
        "{many} polls per message with 10,000 codes waiting"
    );
}

#[actix_rt::test]
async fn a_mac_whose_outbox_cannot_take_joined_is_dropped_not_left_uninformed() {
    let registry = SessionRegistry::new(rules(), limits()).start();
    let (tx, mut told) = tokio::sync::mpsc::unbounded_channel();
    let recorder = Recorder(tx).start().recipient();
    // An outbox the mac's client does not read: it holds 40 bytes of its 64, so the
    // 54-byte `joined` cannot fit.
    let outbox = Outbox::new(64);
    outbox.push(bytes::Bytes::from(vec![0; 40])).unwrap();
    let mac = Peer::new(ConnId::next(), recorder, outbox);
    let mac_conn = mac.conn;
    let connect = Connect {
        role: Role::Mac,
        peer: mac,
        slot: PairingSlot::default(),
        code: true,
    };
    let Reply(reply) = registry.send(connect).await.unwrap();
    let Some(ToConn::Registered { code, .. }) = reply.into_iter().next() else {
        panic!("a mac gets a code");
    };
    let sink = Sink.start().recipient();
    let browser = Peer::new(ConnId::next(), sink, Outbox::new(1 << 20));
    let browser_conn = browser.conn;
    let connect = Connect {
        role: Role::Browser,
        peer: browser,
        slot: PairingSlot::default(),
        code: true,
    };
    registry.send(connect).await.unwrap();
    let join = Join {
        conn: browser_conn,
        code,
        lossless: Lossless::default(),
        failure: None,
        cut_off: false,
    };
    registry.send(join).await.unwrap();
    let mut closed = false;
    while let Ok(Some(command)) =
        tokio::time::timeout(Duration::from_millis(200), told.recv()).await
    {
        closed |= matches!(command, ToConn::Close(Outcome::SlowConsumer));
    }
    assert!(closed, "the mac {mac_conn} was not told to close");
}
