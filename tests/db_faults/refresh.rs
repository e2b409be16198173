//! Refresh tokens: a refresh whose answer was lost, and simultaneous refreshes of one token
//! (issue 16, item 3; issue 15, item 14).

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use hermit_relay::config::Settings;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::*;
use crate::support::*;

on_both_backends!(
    a_refresh_retried_after_a_lost_reply_keeps_the_user_signed_in,
    a_retry_after_the_grace_or_after_the_next_token_was_used_revokes_the_family,
    simultaneous_refreshes_of_one_token_all_get_the_same_next_token,
    without_a_grace_exactly_one_of_simultaneous_refreshes_wins_and_the_family_is_revoked,
);

/// The default deadline: these tests race requests on a loaded machine, and a request past
/// the short one of [`fault_settings`] would be an outage, not what they test.
fn grace(secs: u64) -> Settings {
    let mut s = settings();
    s.auth.refresh_retry_grace_secs = secs;
    s
}

/// Sends a refresh over a raw connection and waits until the relay has spent the token,
/// then hangs up without reading: the answer is lost, as on a dropped mobile connection.
async fn refresh_and_lose_the_reply(server: &TestServer, db: &TestDb, token: &str) {
    use tokio::io::AsyncWriteExt;
    let body = json!({ "refreshToken": token }).to_string();
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    let head = format!(
        "POST /auth/refresh HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let hash = hermit_relay::auth::opaque::hash(token);
    let mut conn = open(db);
    let started = Instant::now();
    while !spent(&mut conn, &hash) {
        assert!(started.elapsed() < WAIT, "the relay never spent the token");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(stream);
}

/// Whether the refresh token with this hash is spent, read straight from the database.
fn spent(conn: &mut hermit_relay::db::DbConnection, hash: &str) -> bool {
    use diesel::prelude::*;
    use hermit_relay::schema::refresh_tokens::dsl::*;
    refresh_tokens
        .filter(token_hash.eq(hash))
        .select(spent_at.is_not_null())
        .first::<bool>(conn)
        .unwrap_or(false)
}

async fn a_refresh_retried_after_a_lost_reply_keeps_the_user_signed_in(db: TestDb) {
    let server = TestServer::start_on(&db, grace(30));
    let ada = owner(&server, "ada@example.com").await;
    refresh_and_lose_the_reply(&server, &db, &ada.refresh).await;

    // The client retries with the token it still has.
    let (status, first) = refresh(&server, &ada.refresh).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let (status, again) = refresh(&server, &ada.refresh).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(
        again["refreshToken"], first["refreshToken"],
        "a retry gets the same next token"
    );
    let access = first["accessToken"].as_str().unwrap();
    let (status, _, _) = request(&server, Method::GET, "/api/machines", Some(access), None).await;
    assert_eq!(status, StatusCode::OK);
    // The family lives on: the next token works, and so does the one after it.
    let (status, next) = refresh(&server, first["refreshToken"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{next}");
    let (status, body) = refresh(&server, next["refreshToken"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn a_retry_after_the_grace_or_after_the_next_token_was_used_revokes_the_family(db: TestDb) {
    let server = TestServer::start_on(&db, grace(1));
    let ada = owner(&server, "ada@example.com").await;
    // After the grace: reuse.
    let (status, next) = refresh(&server, &ada.refresh).await;
    assert_eq!(status, StatusCode::OK, "{next}");
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let (status, _) = refresh(&server, &ada.refresh).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = refresh(&server, next["refreshToken"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the family is revoked");

    // Within the grace, but the next token was already used: reuse too.
    let (status, login) = post(
        &server,
        "/auth/login",
        json!({"email": ada.email, "password": PASSWORD}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{login}");
    let first = login["refreshToken"].as_str().unwrap();
    let (_, second) = refresh(&server, first).await;
    let (status, third) = refresh(&server, second["refreshToken"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{third}");
    let (status, _) = refresh(&server, first).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = refresh(&server, third["refreshToken"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the family is revoked");
}

/// Presents `token` `n` times at once; returns each answer's status and refresh token.
async fn at_once(server: &TestServer, token: &str, n: usize) -> Vec<(StatusCode, Value)> {
    join_all((0..n).map(|_| refresh(server, token))).await
}

async fn simultaneous_refreshes_of_one_token_all_get_the_same_next_token(db: TestDb) {
    let server = TestServer::start_on(&db, grace(30));
    let ada = owner(&server, "ada@example.com").await;
    let mut token = ada.refresh.clone();
    for round in 0..10 {
        let answers = at_once(&server, &token, 12).await;
        let next = answers[0].1["refreshToken"].clone();
        for (status, body) in &answers {
            assert_eq!(*status, StatusCode::OK, "round {round}: {body}");
            assert_eq!(body["refreshToken"], next, "round {round}");
        }
        token = next.as_str().unwrap().to_owned();
    }
    let (status, body) = refresh(&server, &token).await;
    assert_eq!(status, StatusCode::OK, "the family lives on: {body}");
}

async fn without_a_grace_exactly_one_of_simultaneous_refreshes_wins_and_the_family_is_revoked(
    db: TestDb,
) {
    let server = TestServer::start_on(&db, grace(0));
    let ada = owner(&server, "ada@example.com").await;
    for round in 0..10 {
        let (status, login) = post(
            &server,
            "/auth/login",
            json!({"email": ada.email, "password": PASSWORD}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{login}");
        let answers = at_once(&server, login["refreshToken"].as_str().unwrap(), 12).await;
        let winners: Vec<&Value> = answers
            .iter()
            .filter(|(status, _)| *status == StatusCode::OK)
            .map(|(_, body)| body)
            .collect();
        for (status, body) in &answers {
            assert!(
                *status == StatusCode::OK || *status == StatusCode::UNAUTHORIZED,
                "round {round}: {status} {body}"
            );
        }
        assert_eq!(winners.len(), 1, "round {round}: {answers:?}");
        let (status, _) = refresh(&server, winners[0]["refreshToken"].as_str().unwrap()).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "round {round}: the losers were reuse, so the family is revoked"
        );
    }
}
