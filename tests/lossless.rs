//! Lossless mode: with sequence numbers and acknowledgements, no silent network failure
//! loses, duplicates or reorders a message, either way.

#[macro_use]
mod common;

use std::time::Duration;

use common::lossless::exchange_through;
use common::proxy::Proxy;
use common::*;
use serde_json::json;

/// Heartbeat 1 + 2 s: the relay notices a dead link after 3 s. JSON pings every second, so
/// a client notices after a few seconds of silence.
fn lossless_settings() -> hermit_relay::config::Settings {
    let mut s = settings();
    s.heartbeat.interval_secs = 1;
    s.heartbeat.timeout_secs = 2;
    s.pairing.resume_grace_secs = 30;
    s.pairing.ack_interval_ms = 100;
    s.pairing.ack_ping_interval_secs = 1;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_cut_of_the_browser_loses_nothing_either_way() {
    let server = TestServer::start(lossless_settings());
    let mac_proxy = Proxy::start(server.port).await;
    let browser_proxy = Proxy::start(server.port).await;
    // Shorter than the relay's heartbeat deadline: the browser notices first and
    // resumes while the relay still believes in the old connection.
    let cut = browser_proxy.cut(Duration::from_millis(800), Duration::from_millis(2000));
    let (_, browser_resumes) = exchange_through(150, cut, &mac_proxy, &browser_proxy).await;
    assert!(browser_resumes >= 1, "the cut was noticed and resumed from");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_cut_longer_than_the_heartbeat_timeout_loses_nothing_either_way() {
    let server = TestServer::start(lossless_settings());
    let mac_proxy = Proxy::start(server.port).await;
    let browser_proxy = Proxy::start(server.port).await;
    // Longer than interval + timeout (3 s): the relay gives the connection up as lost
    // and holds what is sent to the browser; its reconnects fail until the link is up.
    let cut = browser_proxy.cut(Duration::from_millis(800), Duration::from_millis(5000));
    let (_, browser_resumes) = exchange_through(200, cut, &mac_proxy, &browser_proxy).await;
    assert!(browser_resumes >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_cut_of_the_mac_loses_nothing_either_way() {
    let server = TestServer::start(lossless_settings());
    let mac_proxy = Proxy::start(server.port).await;
    let browser_proxy = Proxy::start(server.port).await;
    let cut = mac_proxy.cut(Duration::from_millis(800), Duration::from_millis(4000));
    let (mac_resumes, _) = exchange_through(150, cut, &mac_proxy, &browser_proxy).await;
    assert!(mac_resumes >= 1);
}

#[tokio::test]
async fn a_side_that_does_not_opt_in_sees_exactly_todays_messages() {
    let mut s = lossless_settings();
    s.pairing.ack_ping_interval_secs = 1;
    let server = TestServer::start(s);
    let (mut mac, code) = mac(&server).await;
    let mut browser = server.connect("/browser").await;
    send(
        &mut browser,
        json!({"type": "join", "code": code, "ack": true}),
    )
    .await;
    assert_eq!(recv(&mut browser).await["type"], "joined");
    assert_eq!(recv(&mut mac).await["type"], "joined");
    send(
        &mut browser,
        json!({"type": "data", "payload": "hi", "seq": 1}),
    )
    .await;
    // The mac did not opt in: no seq, no ack, no JSON ping.
    assert_eq!(
        recv_raw(&mut mac).await,
        r#"{"type":"data","payload":"hi"}"#
    );
    send_data(&mut mac, "hello").await;
    let data = recv(&mut browser).await;
    assert_eq!(data, json!({"type": "data", "payload": "hello", "seq": 1}));
    expect_silence(&mut mac, Duration::from_millis(1500)).await;
}

#[tokio::test]
async fn a_re_sent_message_is_delivered_once_and_a_gap_is_refused() {
    let server = TestServer::start(lossless_settings());
    let (mut mac, code) = mac(&server).await;
    let mut browser = server.connect("/browser").await;
    send(
        &mut browser,
        json!({"type": "join", "code": code, "ack": true}),
    )
    .await;
    assert_eq!(recv(&mut browser).await["type"], "joined");
    assert_eq!(recv(&mut mac).await["type"], "joined");
    for seq in [1, 2, 2, 1, 3] {
        let data = json!({"type": "data", "payload": format!("m{seq}"), "seq": seq});
        send(&mut browser, data).await;
    }
    for seq in 1..=3 {
        expect_data(&mut mac, &format!("m{seq}")).await;
    }
    send(
        &mut browser,
        json!({"type": "data", "payload": "m9", "seq": 9}),
    )
    .await;
    let error = recv_type_skipping_acks(&mut browser).await;
    assert_eq!(error["code"], "INVALID_MESSAGE", "{error}");
    expect_silence(&mut mac, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_side_that_never_acknowledges_is_told_and_dropped_with_memory_bounded() {
    let mut s = lossless_settings();
    s.limits.max_message_bytes = 64 * 1024;
    s.limits.max_outbound_bytes = 4 * 1024 * 1024;
    s.pairing.replay_window_bytes = 2 * 1024 * 1024;
    let server = TestServer::start(s);
    let (mut mac, code) = mac(&server).await;
    let mut browser = server.connect("/browser").await;
    send(
        &mut browser,
        json!({"type": "join", "code": code, "ack": true}),
    )
    .await;
    assert_eq!(recv(&mut browser).await["type"], "joined");
    assert_eq!(recv(&mut mac).await["type"], "joined");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_before = rss_bytes();
    // The browser reads everything but never acknowledges: its window fills.
    let reader = tokio::spawn(async move {
        let mut told = None;
        while let Some(msg) = next_raw(&mut browser).await {
            if msg.contains("REPLAY_WINDOW_FULL") {
                told = Some(msg);
            }
        }
        told
    });
    let chunk = "w".repeat(32 * 1024);
    let mut verdict = None;
    for _ in 0..400 {
        send_data(&mut mac, &chunk).await;
        if let Ok(Some(msg)) =
            tokio::time::timeout(Duration::from_millis(1), next_raw(&mut mac)).await
        {
            verdict = Some(msg);
            break;
        }
    }
    let verdict = match verdict {
        Some(msg) => msg,
        None => next_raw(&mut mac).await.unwrap(),
    };
    assert!(verdict.contains("BROWSER_DISCONNECTED"), "{verdict}");
    let growth = rss_bytes().saturating_sub(rss_before);
    assert!(growth < 48 * 1024 * 1024, "RSS grew {} MiB", growth >> 20);
    let told = tokio::time::timeout(WAIT, reader).await.unwrap().unwrap();
    assert!(
        told.is_some(),
        "the browser was told REPLAY_WINDOW_FULL before the close"
    );
}
