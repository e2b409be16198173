//! Accounts and tokens under a hostile client (issue 15): each test failed before its fix.
//! Real HTTP and WebSockets, on SQLite and on PostgreSQL.

#[macro_use]
mod common;

use std::net::IpAddr;

use common::*;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

on_both_backends!(logout_is_rate_limited_like_the_other_auth_routes,);

const PASSWORD: &str = "correct horse battery";

/// A client whose requests come from `from` (any 127.0.0.x).
fn client_from(from: &str) -> Client {
    Client::builder()
        .local_address(from.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

async fn post_with(
    client: &Client,
    server: &TestServer,
    path: &str,
    body: Value,
) -> (StatusCode, Value) {
    let response = client
        .post(server.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn post(server: &TestServer, path: &str, body: Value) -> (StatusCode, Value) {
    post_with(&Client::new(), server, path, body).await
}

/// Registers `email` and returns the whole answer.
async fn register(server: &TestServer, email: &str) -> Value {
    let (status, body) = post(
        server,
        "/auth/register",
        json!({"email": email, "password": PASSWORD}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn logout_is_rate_limited_like_the_other_auth_routes(db: TestDb) {
    let mut s = settings();
    s.limits.auth_attempts_per_minute = 3;
    let server = TestServer::start_on(&db, s);
    let client = client_from("127.0.0.21");
    for _ in 0..3 {
        let (status, _) = post_with(
            &client,
            &server,
            "/auth/logout",
            json!({"refreshToken": "hrt_unknown"}),
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    let (status, body) = post_with(
        &client,
        &server,
        "/auth/logout",
        json!({"refreshToken": "hrt_unknown"}),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(body["error"].is_string(), "{body}");
    // Another address is not affected.
    let (status, _) = post_with(
        &client_from("127.0.0.22"),
        &server,
        "/auth/logout",
        json!({"refreshToken": "hrt_unknown"}),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}
