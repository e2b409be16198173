//! `/ready` with pending migrations.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::*;
use crate::support::*;

on_both_backends!(pending_migrations_make_the_relay_unready_and_answer_503_until_applied);

async fn pending_migrations_make_the_relay_unready_and_answer_503_until_applied(db: TestDb) {
    let mut s = db.settings(fault_settings());
    s.database.run_migrations = false;
    let server = TestServer::start_with(s.clone());
    let (status, body, _) = request(&server, Method::GET, "/ready", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body["error"].as_str().unwrap().contains("migrations"),
        "{body}"
    );
    let (status, body) = post(
        &server,
        "/auth/register",
        json!({"email": "ada@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");

    let pool = hermit_relay::db::Pool::new(&s.database).unwrap();
    hermit_relay::startup::migrate(&pool).unwrap();
    let took = ready_becomes(&server, StatusCode::OK, Duration::from_secs(5)).await;
    eprintln!("ready {:.2} s after the migrations", took.as_secs_f64());
    owner(&server, "ada@example.com").await;
}
