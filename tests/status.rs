//! `GET /`: the front door an operator opens in a browser.

mod common;

use std::time::Duration;

use common::*;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde_json::Value;

#[tokio::test]
async fn the_front_door_shows_health_and_counts_without_secrets() {
    let mut s = settings();
    s.admin.poll_interval_ms = 100;
    s.metrics.token = "scrape-secret".into();
    let server = TestServer::start(s);
    let (_mac, _browser, _) = pair(&server).await;

    let client = reqwest::Client::new();
    let status = |accept: &'static str| client.get(server.url("/")).header(ACCEPT, accept).send();
    let mut json = Value::Null;
    for _ in 0..100 {
        json = status("application/json")
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if json["database"]["state"] == "reachable" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(json["name"], "hermit-relay", "{json}");
    assert_eq!(json["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(json["status"], "ok");
    assert_eq!(json["database"]["backend"], "sqlite");
    assert_eq!(json["database"]["state"], "reachable", "{json}");
    assert!(json["connections"]["mac"].as_i64().unwrap() >= 1, "{json}");
    assert!(
        json["connections"]["browser"].as_i64().unwrap() >= 1,
        "{json}"
    );
    assert!(json["pairings"].as_i64().unwrap() >= 1, "{json}");
    assert_eq!(json["links"]["health"], "/health");
    assert_eq!(json["links"]["ready"], "/ready");
    assert_eq!(json["links"]["metrics"], "/metrics");

    let page = status("text/html").await.unwrap();
    assert!(page.headers()[CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = page.text().await.unwrap();
    for needle in [
        "hermit-relay",
        "<a href=\"/health\">",
        "<a href=\"/ready\">",
        "reachable",
    ] {
        assert!(html.contains(needle), "{needle} missing:\n{html}");
    }
    for text in [json.to_string(), html] {
        assert!(!text.contains("scrape-secret"));
        assert!(!text.contains("relay.db"), "no database path: {text}");
    }
}
