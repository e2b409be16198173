//! The network edge under a hostile client (issue 15): rate-limiter tables, the budget for
//! failed joins, oversized and malformed frames, slow bodies, lingering closes, proxies,
//! origins and CORS. Memory bounds read the VmRSS of this process, where the relay runs;
//! nothing here asserts on elapsed time.

mod common;

use common::*;
use hermit_relay::config::{ForwardedHeader, Settings};
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

// ---- Items 16, 17: forwarded headers ----

/// The outcome of one `join` from 127.0.0.1 (a trusted proxy) with `headers`.
async fn join_through_proxy(server: &TestServer, headers: &[(&'static str, &str)]) -> String {
    let mut ws = connect_from(server.port, "/browser", "127.0.0.1", headers)
        .await
        .unwrap();
    send(&mut ws, json!({"type": "join", "code": "AAAAAA"})).await;
    recv(&mut ws).await["code"].as_str().unwrap().to_owned()
}

fn one_join_a_minute_behind_a_proxy(header: ForwardedHeader) -> Settings {
    let mut s = settings();
    s.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    s.server.forwarded_header = header;
    s.limits.join_attempts_per_minute = 1;
    s
}

#[tokio::test]
async fn only_the_forwarding_header_the_operator_names_is_believed() {
    let server = TestServer::start(one_join_a_minute_behind_a_proxy(
        ForwardedHeader::Forwarded,
    ));
    // The proxy sets only `Forwarded`; the client adds an X-Forwarded-For of its own,
    // different each time, to get a fresh budget. It is one client all the same.
    let first = join_through_proxy(
        &server,
        &[("x-forwarded-for", "192.0.2.1"), ("forwarded", "for=198.51.100.7")],
    )
    .await;
    let second = join_through_proxy(
        &server,
        &[("x-forwarded-for", "192.0.2.2"), ("forwarded", "for=198.51.100.7")],
    )
    .await;
    assert_eq!((first.as_str(), second.as_str()), ("INVALID_CODE", "RATE_LIMITED"));
    // Another client behind the same proxy has its own budget.
    let other = join_through_proxy(&server, &[("forwarded", "for=198.51.100.8")]).await;
    assert_eq!(other, "INVALID_CODE");
}

#[tokio::test]
async fn a_hop_that_is_not_an_address_stops_the_walk_so_forged_hops_left_of_it_are_not_believed() {
    let server = TestServer::start(one_join_a_minute_behind_a_proxy(
        ForwardedHeader::XForwardedFor,
    ));
    // A proxy that did not know its client wrote `unknown`; the client forged the rest.
    let first = join_through_proxy(&server, &[("x-forwarded-for", "192.0.2.1, unknown")]).await;
    let second = join_through_proxy(&server, &[("x-forwarded-for", "192.0.2.2, unknown")]).await;
    assert_eq!((first.as_str(), second.as_str()), ("INVALID_CODE", "RATE_LIMITED"));
}

#[test]
fn the_production_config_trusts_no_proxy_until_the_operator_names_one() {
    let settings = Settings::load_from(
        Some(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/production.toml"
        ))),
        config::Environment::with_prefix("HERMIT_UNSET_IN_THIS_TEST"),
    )
    .unwrap();
    assert!(settings.server.trusted_proxies.is_empty());
    assert_eq!(settings.server.forwarded_header, ForwardedHeader::XForwardedFor);
}
