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
            })
            .await
            .unwrap();
    }
}

/// Timer polls per message while the registry handles `messages` joins.
async fn polls_per_message(waiting: u64, messages: u64) -> f64 {
    let registry = SessionRegistry::new(rules()).start();
    macs(&registry, waiting).await;
    let before = registry.send(Stats).await.unwrap();
    assert_eq!(before.deadlines, waiting as usize);
    assert_eq!(before.timers_armed, 1, "one timer however many deadlines");
    let browser = ConnId::next();
    for _ in 0..messages {
        let join = Join {
            conn: browser,
            code: "AAAAAA".into(),
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
