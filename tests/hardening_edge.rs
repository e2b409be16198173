//! The network edge under a hostile client (issue 15): rate-limiter tables, the budget for
//! failed joins, oversized and malformed frames, slow bodies, lingering closes, proxies,
//! origins and CORS. Memory bounds read the VmRSS of this process, where the relay runs;
//! nothing here asserts on elapsed time.

mod common;

use common::*;
use serde_json::json;

// ---- Item 4: a full rate-limiter table evicts instead of refusing everyone new ----

#[tokio::test]
async fn a_full_rate_limiter_table_still_admits_new_addresses() {
    let mut s = settings();
    s.limits.max_tracked_addresses = 2;
    s.limits.join_attempts_per_minute = 5;
    let server = TestServer::start(s);
    // Six addresses each spend an attempt within the minute: far more than are tracked.
    for host in 2..8 {
        let from = format!("127.0.0.{host}");
        let mut ws = connect_from(server.port, "/browser", &from, &[])
            .await
            .unwrap();
        send(&mut ws, json!({"type": "join", "code": "AAAAAA"})).await;
        expect_error(&mut ws, "INVALID_CODE").await;
    }
    let metrics = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let evictions = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hermit_rate_limiter_evictions_total "))
        .expect("the eviction counter is exported");
    assert!(evictions.parse::<u64>().unwrap() >= 4, "{evictions}");
}

// ---- Item 5: a relay-wide budget for failed joins ----

#[tokio::test]
async fn failed_joins_are_bounded_relay_wide_however_many_addresses_guess() {
    let mut s = settings();
    s.limits.failed_joins_per_minute = 5;
    let server = TestServer::start(s);
    let (mut invalid, mut limited) = (0, 0);
    for host in 2..12 {
        let from = format!("127.0.0.{host}");
        let mut ws = connect_from(server.port, "/browser", &from, &[])
            .await
            .unwrap();
        for _ in 0..3 {
            send(&mut ws, json!({"type": "join", "code": "AAAAAA"})).await;
            let msg = recv(&mut ws).await;
            match msg["code"].as_str().unwrap() {
                "INVALID_CODE" => invalid += 1,
                "RATE_LIMITED" => limited += 1,
                other => panic!("unexpected {other}"),
            }
        }
    }
    assert_eq!((invalid, limited), (5, 25));

    // While the budget is spent every join is refused, even one with a live code...
    let (_mac, code) = mac(&server).await;
    let mut browser = connect_from(server.port, "/browser", "127.0.0.99", &[])
        .await
        .unwrap();
    send(&mut browser, json!({"type": "join", "code": code})).await;
    let text = expect_error(&mut browser, "RATE_LIMITED").await;
    assert!(text.contains("wrong codes"), "{text}");
}

#[tokio::test]
async fn good_joins_do_not_spend_the_failed_join_budget_and_resumes_ignore_it() {
    let mut s = settings();
    s.limits.failed_joins_per_minute = 1;
    s.limits.failed_joins_per_network_per_minute = 1;
    let server = TestServer::start(s);
    for _ in 0..5 {
        pair(&server).await;
    }
    let (_mac, mut browser, session) = pair(&server).await;
    // One wrong code spends the whole budget...
    let mut guesser = server.connect("/browser").await;
    send(&mut guesser, json!({"type": "join", "code": "AAAAAA"})).await;
    expect_error(&mut guesser, "INVALID_CODE").await;
    send(&mut guesser, json!({"type": "join", "code": "AAAAAA"})).await;
    expect_error(&mut guesser, "RATE_LIMITED").await;
    // ...and a paired browser that lost its connection still resumes by its sessionId.
    drop(browser);
    let mut back = server.connect("/browser").await;
    send(&mut back, json!({"type": "resume", "sessionId": session})).await;
    browser = back;
    assert_eq!(recv(&mut browser).await["type"], "joined");
}

#[tokio::test]
async fn one_network_cannot_spend_the_whole_failed_join_budget() {
    let mut s = settings();
    s.limits.failed_joins_per_minute = 100;
    s.limits.failed_joins_per_network_per_minute = 2;
    let server = TestServer::start(s);
    // 127.0.0.2 and 127.0.0.3 are one /24: they share two failures.
    let mut outcomes = Vec::new();
    for from in ["127.0.0.2", "127.0.0.3", "127.0.0.2"] {
        let mut ws = connect_from(server.port, "/browser", from, &[])
            .await
            .unwrap();
        send(&mut ws, json!({"type": "join", "code": "AAAAAA"})).await;
        outcomes.push(recv(&mut ws).await["code"].as_str().unwrap().to_owned());
    }
    assert_eq!(outcomes, ["INVALID_CODE", "INVALID_CODE", "RATE_LIMITED"]);
}
