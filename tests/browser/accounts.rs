//! Account mode from a web app on another origin than the relay's: the HTTP API through
//! `fetch()` (CORS), `/ws/client` attached to a session whose agent is the test, and what a
//! page from an origin the relay does not allow reads.

use serde_json::{json, Value};

use super::common::{account, send};
use super::{Route, Stage};

directly_and_through_nginx!(
    a_page_on_another_origin_registers_logs_in_and_manages_machines,
    a_page_from_an_origin_not_allowed_reads_1008_and_cannot_call_the_api,
    a_page_attached_through_ws_client_exchanges_output_with_the_agent,
);

const PASSWORD: &str = "a long and unremarkable passphrase";

async fn a_page_on_another_origin_registers_logs_in_and_manages_machines(route: Route) {
    let Some(stage) = Stage::start(route, |_| {}).await else {
        return;
    };
    let page = &stage.page;
    let credentials = json!({"email": "ada@example.com", "password": PASSWORD});
    let registered = page
        .fetch(
            "POST",
            &stage.http("/auth/register"),
            credentials.clone(),
            None,
        )
        .await;
    assert_eq!(registered["status"], 200, "{registered}");
    let login = page
        .fetch("POST", &stage.http("/auth/login"), credentials, None)
        .await;
    assert_eq!(login["status"], 200, "{login}");
    // The page reads a refusal's status and text, not a blocked call.
    let wrong = json!({"email": "ada@example.com", "password": "not the passphrase"});
    let refused = page
        .fetch("POST", &stage.http("/auth/login"), wrong, None)
        .await;
    assert_eq!(refused["status"], 401, "{refused}");
    assert_eq!(refused["body"]["error"], "Invalid credentials", "{refused}");

    // Authorization makes every /api call preflighted.
    let access = login["body"]["accessToken"].as_str().unwrap();
    let machines = stage.http("/api/machines");
    let created = page
        .fetch("POST", &machines, json!({"name": "studio"}), Some(access))
        .await;
    assert_eq!(created["status"], 200, "{created}");
    let listed = page
        .fetch("GET", &machines, Value::Null, Some(access))
        .await;
    assert_eq!(listed["status"], 200, "{listed}");
    assert_eq!(listed["body"]["machines"][0]["name"], "studio", "{listed}");
    let id = created["body"]["machine"]["id"].as_str().unwrap();
    let one = stage.http(&format!("/api/machines/{id}"));
    let deleted = page.fetch("DELETE", &one, Value::Null, Some(access)).await;
    assert_eq!(deleted["status"], 204, "{deleted}");

    let refresh = json!({"refreshToken": login["body"]["refreshToken"]});
    let refreshed = page
        .fetch("POST", &stage.http("/auth/refresh"), refresh, None)
        .await;
    assert_eq!(refreshed["status"], 200, "{refreshed}");
    assert!(refreshed["body"]["accessToken"].is_string(), "{refreshed}");
}

async fn a_page_from_an_origin_not_allowed_reads_1008_and_cannot_call_the_api(route: Route) {
    let only = |s: &mut hermit_relay::config::Settings| {
        s.server.allowed_origins = vec!["https://app.example.com".into()];
    };
    let Some(stage) = Stage::start(route, only).await else {
        return;
    };
    for path in ["/browser", "/ws/client"] {
        let socket = stage.page.open(&stage.ws(path)).await;
        let (closed, messages) = stage.page.closed(socket).await;
        // Not 1006: a page that reconnects on a dropped network must see this is different.
        let seen = (closed.code, closed.reason.as_str(), closed.clean);
        assert_eq!(
            seen,
            (1008, "origin not allowed", true),
            "{path}: {closed:?}"
        );
        assert!(messages.is_empty(), "{path}: {messages:?}");
    }

    let credentials = json!({"email": "ada@example.com", "password": PASSWORD});
    let blocked = stage
        .page
        .fetch(
            "POST",
            &stage.http("/auth/register"),
            credentials.clone(),
            None,
        )
        .await;
    let error = blocked["error"].as_str().unwrap_or_default();
    assert!(error.contains("Failed to fetch"), "not blocked: {blocked}");
    // The preflight was refused, so the request itself never reached the relay: the email
    // is still free.
    let http = reqwest::Client::new();
    let status = http
        .post(stage.server.url("/auth/register"))
        .json(&credentials)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
}

async fn a_page_attached_through_ws_client_exchanges_output_with_the_agent(route: Route) {
    let Some(stage) = Stage::start(route, |_| {}).await else {
        return;
    };
    let owner = account::owner(&stage.server, "ada@example.com").await;
    let mut agent = account::agent(&stage.server, &owner, &["s1"]).await;
    let page = &stage.page;
    let client = page.connect(&stage.ws("/ws/client")).await;
    page.send(client, json!({"type": "auth", "token": owner.access}))
        .await;
    assert_eq!(
        page.recv_type(client, "authenticated").await["type"],
        "authenticated"
    );
    let attach = json!({"type": "attach", "machineId": owner.machine_id, "sessionId": "s1"});
    page.send(client, attach).await;
    let heard = account::recv_type(&mut agent, "attach").await;
    assert_eq!(heard["sessionId"], "s1", "{heard}");
    let attached = page.recv_type(client, "attached").await;
    assert_eq!(attached, json!({"type": "attached", "sessionId": "s1"}));

    // Output from the agent, then input and a resize from the page.
    let output = "$ ls\r\nréadme.md  日本語.txt  🦀.rs\r\n\u{1b}[32m$\u{1b}[0m ";
    let data = json!({"type": "data", "sessionId": "s1", "data": output});
    send(&mut agent, data.clone()).await;
    assert_eq!(page.recv_type(client, "data").await, data);
    let input = json!({"type": "data", "sessionId": "s1", "data": "echo ✓\r"});
    page.send(client, input.clone()).await;
    assert_eq!(account::recv_type(&mut agent, "data").await, input);
    let resize = json!({"type": "resize", "sessionId": "s1", "cols": 120, "rows": 40});
    page.send(client, resize.clone()).await;
    assert_eq!(account::recv_type(&mut agent, "resize").await, resize);
}
