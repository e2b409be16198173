//! Quick pairing (PROTOCOL.md §1) over real WebSockets against the real relay.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

const ALPHABET: &str = "346789ABCDEFGHJKLMNPQRTUVWXY";

#[tokio::test]
async fn a_mac_is_registered_with_a_six_character_code_on_connect() {
    let server = TestServer::start(settings());
    let mut ws = server.connect("/mac").await;
    let msg = recv(&mut ws).await;
    assert_eq!(msg["type"], "registered");
    let code = msg["code"].as_str().unwrap();
    assert_eq!(code.len(), 6);
    assert!(code.chars().all(|c| ALPHABET.contains(c)), "{code}");
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let expires_at = msg["expiresAt"].as_i64().unwrap();
    let ttl_ms = expires_at - now_ms;
    assert!(
        (295_000..=301_000).contains(&ttl_ms),
        "expiresAt is {ttl_ms} ms away"
    );
}

#[tokio::test]
async fn a_browser_joins_with_a_code_as_typed_and_both_sides_are_told() {
    let server = TestServer::start(settings());
    let (mut mac, code) = mac(&server).await;
    let mut browser = server.connect("/browser").await;
    let typed = format!("  {} \n", code.to_lowercase());
    send(&mut browser, json!({"type": "join", "code": typed})).await;
    let joined = recv(&mut browser).await;
    assert_eq!(joined["type"], "joined");
    let session = joined["sessionId"].as_str().unwrap();
    let uuid = uuid::Uuid::parse_str(session).unwrap();
    assert_eq!(uuid.get_version_num(), 4);
    assert_eq!(recv(&mut mac).await, joined);
}

#[tokio::test]
async fn data_flows_both_ways_in_order_and_unchanged() {
    let server = TestServer::start(settings());
    let (mut mac, mut browser, _) = pair(&server).await;
    let samples = [
        "plain text",
        "\u{1b}[31mred\u{1b}[0m \u{1b}]0;title\u{7}\r\n",
        "unicode: héllo ✓ 日本語 🦀 \u{0} nul",
        "quotes \" and backslashes \\ and \t tabs",
        "",
    ];
    for sample in samples {
        send_data(&mut mac, sample).await;
        expect_data(&mut browser, sample).await;
        send_data(&mut browser, sample).await;
        expect_data(&mut mac, sample).await;
    }
    for i in 0..500 {
        send_data(&mut mac, &format!("line {i}")).await;
    }
    for i in 0..500 {
        expect_data(&mut browser, &format!("line {i}")).await;
    }
}

#[tokio::test]
async fn unknown_and_malformed_codes_are_invalid_code() {
    let server = TestServer::start(settings());
    let mut browser = server.connect("/browser").await;
    for code in ["AAAAAA", "H4F7K0", "", "TOOLONGCODE", &"A".repeat(10_000)] {
        send(&mut browser, json!({"type": "join", "code": code})).await;
        expect_error(&mut browser, "INVALID_CODE").await;
    }
    assert_usable(&mut browser).await;
}

#[tokio::test]
async fn an_expired_code_is_rejected_and_the_mac_is_told_when_it_expires() {
    let mut s = settings();
    s.pairing.code_ttl_secs = 1;
    let server = TestServer::start(s);
    let (mut mac, code) = mac(&server).await;
    expect_error(&mut mac, "EXPIRED_CODE").await;
    let mut browser = server.connect("/browser").await;
    send(&mut browser, json!({"type": "join", "code": code})).await;
    expect_error(&mut browser, "EXPIRED_CODE").await;

    // The mac may ask for a new code, and that one works.
    send(&mut mac, json!({"type": "register", "clientId": "mac-1"})).await;
    let registered = recv(&mut mac).await;
    assert_eq!(registered["type"], "registered");
    send(
        &mut browser,
        json!({"type": "join", "code": registered["code"]}),
    )
    .await;
    assert_eq!(recv(&mut browser).await["type"], "joined");
}

#[tokio::test]
async fn a_code_is_single_use_even_after_its_browser_leaves() {
    let server = TestServer::start(settings());
    let (mut mac, code) = mac(&server).await;
    let mut first = server.connect("/browser").await;
    send(&mut first, json!({"type": "join", "code": code})).await;
    assert_eq!(recv(&mut first).await["type"], "joined");
    recv(&mut mac).await;

    let mut second = server.connect("/browser").await;
    send(&mut second, json!({"type": "join", "code": code})).await;
    expect_error(&mut second, "ALREADY_JOINED").await;

    first.close(None).await.unwrap();
    expect_error(&mut mac, "BROWSER_DISCONNECTED").await;
    send(&mut second, json!({"type": "join", "code": code})).await;
    expect_error(&mut second, "ALREADY_JOINED").await;
}

#[tokio::test]
async fn a_paired_browser_cannot_join_another_code() {
    let server = TestServer::start(settings());
    let (_mac, mut browser, _) = pair(&server).await;
    let (_other_mac, other_code) = mac(&server).await;
    send(&mut browser, json!({"type": "join", "code": other_code})).await;
    expect_error(&mut browser, "ALREADY_JOINED").await;
}

#[tokio::test]
async fn register_withdraws_the_current_code_and_issues_a_fresh_one() {
    let server = TestServer::start(settings());
    let (mut mac, old) = mac(&server).await;
    send(
        &mut mac,
        json!({"type": "register", "clientId": "0b6f3a52-6e4e-4c4b-9a53-4d1f0c2f7d11"}),
    )
    .await;
    let msg = recv(&mut mac).await;
    assert_eq!(msg["type"], "registered");
    assert_ne!(msg["code"], old.as_str());
    let mut browser = server.connect("/browser").await;
    send(&mut browser, json!({"type": "join", "code": old})).await;
    expect_error(&mut browser, "EXPIRED_CODE").await;
}

#[tokio::test]
async fn register_while_paired_is_refused_and_the_pairing_goes_on() {
    let server = TestServer::start(settings());
    let (mut mac, mut browser, _) = pair(&server).await;
    send(&mut mac, json!({"type": "register", "clientId": "x"})).await;
    expect_error(&mut mac, "INVALID_MESSAGE").await;
    send_data(&mut mac, "still here").await;
    expect_data(&mut browser, "still here").await;
}

#[tokio::test]
async fn a_mac_that_closes_is_reported_to_its_browser_at_once() {
    let mut s = settings();
    s.pairing.resume_grace_secs = 60;
    let server = TestServer::start(s);
    let (mut mac, mut browser, _) = pair(&server).await;
    mac.close(None).await.unwrap();
    expect_error(&mut browser, "MAC_DISCONNECTED").await;
    send_data(&mut browser, "anyone?").await;
    expect_error(&mut browser, "INVALID_MESSAGE").await;
}

#[tokio::test]
async fn a_browser_that_closes_is_reported_to_its_mac_at_once() {
    let mut s = settings();
    s.pairing.resume_grace_secs = 60;
    let server = TestServer::start(s);
    let (mut mac, mut browser, _) = pair(&server).await;
    browser.close(None).await.unwrap();
    expect_error(&mut mac, "BROWSER_DISCONNECTED").await;
    // The mac may then ask for a new code for the next browser.
    send(&mut mac, json!({"type": "register", "clientId": "m"})).await;
    assert_eq!(recv(&mut mac).await["type"], "registered");
}

#[tokio::test]
async fn invalid_messages_get_invalid_message_and_leave_the_connection_usable() {
    let server = TestServer::start(settings());
    let (mut mac, _) = mac(&server).await;
    let mut browser = server.connect("/browser").await;
    for ws in [&mut mac, &mut browser] {
        for bad in [
            "not json",
            "{\"type\":",
            "[1,2,3]",
            "{\"no_type\":1}",
            "{\"type\":\"teleport\"}",
            "{\"type\":\"join\"}",
            "{\"type\":\"join\",\"code\":42}",
            "{\"type\":\"data\"}",
            "{\"type\":\"data\",\"payload\":\"before pairing\"}",
            "{\"type\":\"ping\",\"ts\":\"nan\"}",
        ] {
            ws.send(Message::text(bad)).await.unwrap();
            let msg = recv(ws).await;
            // A join on /mac is refused as a message not allowed on that endpoint.
            assert_eq!(msg["type"], "error", "{bad}: {msg}");
            assert_eq!(msg["code"], "INVALID_MESSAGE", "{bad}: {msg}");
        }
        ws.send(Message::binary(vec![0xde, 0xad, 0xbe, 0xef]))
            .await
            .unwrap();
        expect_error(ws, "INVALID_MESSAGE").await;
        // (A text frame that is not UTF-8 breaks WebSocket itself, not the protocol: it ends
        // the connection with 1007, as RFC 6455 says — tests/hardening_edge.rs.)
        assert_usable(ws).await;
    }
    send(&mut mac, json!({"type": "join", "code": "ABCDEF"})).await;
    let text = expect_error(&mut mac, "INVALID_MESSAGE").await;
    assert!(text.contains("/mac"), "{text}");
    send(&mut browser, json!({"type": "register", "clientId": "x"})).await;
    expect_error(&mut browser, "INVALID_MESSAGE").await;
}

#[tokio::test]
async fn ping_is_answered_with_pong_and_the_same_ts() {
    let server = TestServer::start(settings());
    let (mut mac, mut browser, _) = pair(&server).await;
    for ts in [json!(0), json!(1732300000123_i64), json!(1.5)] {
        send(&mut mac, json!({"type": "ping", "ts": ts})).await;
        assert_eq!(recv(&mut mac).await, json!({"type": "pong", "ts": ts}));
    }
    assert_usable(&mut browser).await;
}

#[tokio::test]
async fn a_one_mib_payload_passes_unchanged() {
    let server = TestServer::start(settings());
    let (mut mac, mut browser, _) = pair(&server).await;
    let payload: String = (0..1024 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    send_data(&mut mac, &payload).await;
    expect_data(&mut browser, &payload).await;
    send_data(&mut browser, &payload).await;
    expect_data(&mut mac, &payload).await;
}

#[tokio::test]
async fn a_fragmented_message_is_reassembled_and_forwarded_whole() {
    let server = TestServer::start(settings());
    let (mut mac, mut browser, _) = pair(&server).await;
    let text = json!({"type": "data", "payload": "frag—mented ✓ message"}).to_string();
    let bytes = text.as_bytes();
    let (a, rest) = bytes.split_at(7);
    let (b, c) = rest.split_at(9);
    let frames = [
        Frame::message(a.to_vec(), OpCode::Data(Data::Text), false),
        Frame::message(b.to_vec(), OpCode::Data(Data::Continue), false),
        Frame::message(c.to_vec(), OpCode::Data(Data::Continue), true),
    ];
    for frame in frames {
        mac.send(Message::Frame(frame)).await.unwrap();
    }
    expect_data(&mut browser, "frag—mented ✓ message").await;
}

#[tokio::test]
async fn a_message_over_the_limit_gets_message_too_large_then_close_1009() {
    let mut s = settings();
    s.limits.max_message_bytes = 64 * 1024;
    let server = TestServer::start(s);
    let (mut mac, mut browser, _) = pair(&server).await;
    send_data(&mut mac, &"x".repeat(64 * 1024)).await;
    expect_error(&mut mac, "MESSAGE_TOO_LARGE").await;
    assert_eq!(expect_closed(&mut mac, WAIT).await, Some(1009));
    expect_error(&mut browser, "MAC_DISCONNECTED").await;
}

#[tokio::test]
async fn fragments_that_add_up_past_the_limit_are_too_large() {
    let mut s = settings();
    s.limits.max_message_bytes = 4096;
    let server = TestServer::start(s);
    let (mut mac, _) = mac(&server).await;
    mac.send(Message::Frame(Frame::message(
        vec![b'x'; 3000],
        OpCode::Data(Data::Text),
        false,
    )))
    .await
    .unwrap();
    mac.send(Message::Frame(Frame::message(
        vec![b'x'; 3000],
        OpCode::Data(Data::Continue),
        true,
    )))
    .await
    .unwrap();
    expect_error(&mut mac, "MESSAGE_TOO_LARGE").await;
    assert_eq!(expect_closed(&mut mac, WAIT).await, Some(1009));
}

#[tokio::test]
async fn a_hundred_concurrent_pairs_exchange_data_without_cross_talk() {
    let server = TestServer::start(settings());
    let mut tasks = Vec::new();
    for pair_no in 0..100 {
        let url_mac = server.ws_url("/mac");
        let url_browser = server.ws_url("/browser");
        tasks.push(tokio::spawn(async move {
            let (mut mac, _) = tokio_tungstenite::connect_async(url_mac).await.unwrap();
            let registered = recv(&mut mac).await;
            let (mut browser, _) = tokio_tungstenite::connect_async(url_browser).await.unwrap();
            send(
                &mut browser,
                json!({"type": "join", "code": registered["code"]}),
            )
            .await;
            assert_eq!(recv(&mut browser).await["type"], "joined");
            assert_eq!(recv(&mut mac).await["type"], "joined");
            for i in 0..20 {
                send_data(&mut mac, &format!("pair {pair_no} mac {i}")).await;
                send_data(&mut browser, &format!("pair {pair_no} browser {i}")).await;
            }
            for i in 0..20 {
                expect_data(&mut browser, &format!("pair {pair_no} mac {i}")).await;
                expect_data(&mut mac, &format!("pair {pair_no} browser {i}")).await;
            }
            registered["code"].as_str().unwrap().to_owned()
        }));
    }
    let mut codes = Vec::new();
    for task in tasks {
        codes.push(task.await.unwrap());
    }
    codes.sort();
    codes.dedup();
    assert_eq!(codes.len(), 100, "codes are unique");
}

#[tokio::test]
async fn a_lost_browser_resumes_within_the_grace_period_and_gets_what_was_held() {
    let mut s = settings();
    s.pairing.resume_grace_secs = 30;
    let server = TestServer::start(s);
    let (mut mac, browser, session) = pair(&server).await;
    // Lose the connection without a close frame.
    drop(browser);
    // The mac is not told at once: the browser may come back.
    expect_silence(&mut mac, Duration::from_millis(500)).await;
    for i in 0..10 {
        send_data(&mut mac, &format!("held {i}")).await;
    }

    let mut browser = server.connect("/browser").await;
    send(
        &mut browser,
        json!({"type": "resume", "sessionId": session}),
    )
    .await;
    let joined = recv(&mut browser).await;
    assert_eq!(joined, json!({"type": "joined", "sessionId": session}));
    assert_eq!(recv(&mut mac).await, joined);
    for i in 0..10 {
        expect_data(&mut browser, &format!("held {i}")).await;
    }
    send_data(&mut browser, "back").await;
    expect_data(&mut mac, "back").await;
}

#[tokio::test]
async fn a_browser_lost_past_the_grace_period_cannot_resume_and_the_mac_is_told() {
    let mut s = settings();
    s.pairing.resume_grace_secs = 1;
    let server = TestServer::start(s);
    let (mut mac, browser, session) = pair(&server).await;
    drop(browser);
    expect_error(&mut mac, "BROWSER_DISCONNECTED").await;
    let mut browser = server.connect("/browser").await;
    send(
        &mut browser,
        json!({"type": "resume", "sessionId": session}),
    )
    .await;
    expect_error(&mut browser, "INVALID_CODE").await;
}

#[tokio::test]
async fn a_resume_with_an_unknown_session_is_refused() {
    let server = TestServer::start(settings());
    let mut browser = server.connect("/browser").await;
    for session in ["not-a-uuid", "5a3c2f0e-8f3b-4d6a-9c1e-2b7d4e6f8a90"] {
        send(
            &mut browser,
            json!({"type": "resume", "sessionId": session}),
        )
        .await;
        expect_error(&mut browser, "INVALID_CODE").await;
    }
}

#[tokio::test]
async fn a_lost_mac_resumes_by_registering_with_its_client_id() {
    let mut s = settings();
    s.pairing.resume_grace_secs = 30;
    let server = TestServer::start(s);
    let client_id = "6d1c7a3e-2f4b-4e8a-b1c9-0a2b3c4d5e6f";
    let (mut mac, _) = mac(&server).await;
    send(&mut mac, json!({"type": "register", "clientId": client_id})).await;
    let code = recv(&mut mac).await["code"].as_str().unwrap().to_owned();
    let mut browser = server.connect("/browser").await;
    send(&mut browser, json!({"type": "join", "code": code})).await;
    let joined = recv(&mut browser).await;
    assert_eq!(recv(&mut mac).await, joined);

    drop(mac);
    expect_silence(&mut browser, Duration::from_millis(500)).await;
    send_data(&mut browser, "typed while the mac was away").await;

    let mut mac = server.connect("/mac").await;
    assert_eq!(recv(&mut mac).await["type"], "registered");
    send(&mut mac, json!({"type": "register", "clientId": client_id})).await;
    assert_eq!(recv(&mut mac).await, joined);
    assert_eq!(recv(&mut browser).await, joined);
    expect_data(&mut mac, "typed while the mac was away").await;
    send_data(&mut mac, "welcome back").await;
    expect_data(&mut browser, "welcome back").await;
}

#[tokio::test]
async fn a_mac_lost_past_the_grace_period_is_reported_to_its_browser() {
    let mut s = settings();
    s.pairing.resume_grace_secs = 1;
    let server = TestServer::start(s);
    let (mac, mut browser, _) = pair(&server).await;
    drop(mac);
    expect_error(&mut browser, "MAC_DISCONNECTED").await;
}

#[tokio::test]
async fn the_relay_sends_websocket_pings_at_the_heartbeat_interval() {
    let mut s = settings();
    s.heartbeat.interval_secs = 1;
    let server = TestServer::start(s);
    let (mut mac, _) = mac(&server).await;
    let got_ping = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(Ok(Message::Ping(_))) = futures_util::StreamExt::next(&mut mac).await {
                return;
            }
        }
    })
    .await;
    assert!(got_ping.is_ok(), "no ping within 5 s");
}

#[tokio::test]
async fn an_unpaired_connection_is_closed_after_the_idle_timeout() {
    let mut s = settings();
    s.pairing.idle_unpaired_timeout_secs = 1;
    s.heartbeat.interval_secs = 1;
    s.heartbeat.timeout_secs = 1;
    let server = TestServer::start(s);
    let mut browser = server.connect("/browser").await;
    assert_eq!(expect_closed(&mut browser, WAIT).await, Some(1000));
}

#[tokio::test]
async fn a_browser_that_stops_answering_is_dropped_and_its_mac_told_after_the_grace() {
    let mut s = settings();
    s.heartbeat.interval_secs = 1;
    s.heartbeat.timeout_secs = 1;
    s.pairing.resume_grace_secs = 1;
    let server = TestServer::start(s);
    let (mut mac, browser, _) = pair(&server).await;
    // The browser never reads again, so it never answers a ping.
    let started = std::time::Instant::now();
    expect_error(&mut mac, "BROWSER_DISCONNECTED").await;
    assert!(started.elapsed() >= Duration::from_secs(2));
    drop(browser);
}

#[tokio::test]
async fn register_is_rate_limited_like_join() {
    let mut s = settings();
    s.limits.join_attempts_per_minute = 3;
    let server = TestServer::start(s);
    let (mut mac, _) = mac(&server).await;
    for _ in 0..3 {
        send(&mut mac, json!({"type": "register", "clientId": "m"})).await;
        assert_eq!(recv(&mut mac).await["type"], "registered");
    }
    send(&mut mac, json!({"type": "register", "clientId": "m"})).await;
    expect_error(&mut mac, "RATE_LIMITED").await;
    assert_usable(&mut mac).await;
}

#[tokio::test]
async fn a_guessable_client_id_cannot_take_over_a_lost_pairing() {
    let mut s = settings();
    s.pairing.resume_grace_secs = 30;
    let server = TestServer::start(s);
    let (mut mac, _) = mac(&server).await;
    send(&mut mac, json!({"type": "register", "clientId": "mac-1"})).await;
    let code = recv(&mut mac).await["code"].as_str().unwrap().to_owned();
    let mut browser = server.connect("/browser").await;
    send(&mut browser, json!({"type": "join", "code": code})).await;
    assert_eq!(recv(&mut browser).await["type"], "joined");
    assert_eq!(recv(&mut mac).await["type"], "joined");
    drop(mac);
    expect_silence(&mut browser, Duration::from_millis(300)).await;

    // Someone else sends the same guessable clientId: a fresh code, not the pairing.
    let (mut stranger, _) = common::mac(&server).await;
    send(
        &mut stranger,
        json!({"type": "register", "clientId": "mac-1"}),
    )
    .await;
    assert_eq!(recv(&mut stranger).await["type"], "registered");
    send_data(&mut browser, "for my own mac only").await;
    expect_silence(&mut stranger, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn held_messages_reach_a_resumed_browser_whole_and_in_order_or_not_at_all() {
    let mut s = settings();
    s.pairing.resume_grace_secs = 30;
    s.limits.max_message_bytes = 16 * 1024;
    s.limits.max_outbound_bytes = 60_150;
    // The hold can fill the resumed side's outbox to within a few bytes of its bound.
    s.pairing.resume_buffer_bytes = 60_150;
    let server = TestServer::start(s);
    for round in 0..5 {
        let (mut mac, browser, session) = pair(&server).await;
        drop(browser);
        expect_silence(&mut mac, Duration::from_millis(300)).await;
        let payload = |i: usize| format!("{round}.{i}.{}", "h".repeat(15_000));
        for i in 0..4 {
            send_data(&mut mac, &payload(i)).await;
        }
        let mut browser = server.connect("/browser").await;
        send(
            &mut browser,
            json!({"type": "resume", "sessionId": session}),
        )
        .await;
        assert_eq!(recv(&mut browser).await["type"], "joined");
        send_data(&mut mac, &payload(4)).await;
        // What the browser gets is always a prefix of what was sent, in order, with nothing
        // missing: all five, or — when its outbox cannot take them — fewer, after which it
        // is dropped and the mac told. Never a stream with a hole in it.
        let mut got = 0;
        while let Ok(Some(Ok(msg))) =
            tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut browser)).await
        {
            let Message::Text(text) = msg else { break };
            let data: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(
                data["payload"],
                payload(got),
                "message {got} of round {round}"
            );
            got += 1;
            if got == 5 {
                break;
            }
        }
        if got < 5 {
            assert_eq!(recv(&mut mac).await["type"], "joined");
            assert_eq!(recv(&mut mac).await["code"], "BROWSER_DISCONNECTED");
        }
    }
}

#[tokio::test]
async fn held_messages_past_the_resume_buffer_end_the_pairing_rather_than_leave_a_gap() {
    let mut s = settings();
    s.pairing.resume_grace_secs = 30;
    s.pairing.resume_buffer_bytes = 2048;
    let server = TestServer::start(s);
    let (mut mac, browser, session) = pair(&server).await;
    drop(browser);
    expect_silence(&mut mac, Duration::from_millis(500)).await;
    for _ in 0..3 {
        send_data(&mut mac, &"h".repeat(1000)).await;
    }
    expect_error(&mut mac, "BROWSER_DISCONNECTED").await;
    let mut browser = server.connect("/browser").await;
    send(
        &mut browser,
        json!({"type": "resume", "sessionId": session}),
    )
    .await;
    expect_error(&mut browser, "INVALID_CODE").await;
}
