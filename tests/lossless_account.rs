//! Lossless mode on an attached account session: with sequence numbers and
//! acknowledgements, no silent cut of the client's or the agent's link loses, duplicates
//! or reorders terminal input or output.

#[macro_use]
mod common;

use std::time::Duration;

use common::account::{eventually_machine, owner};
use common::lossless_account::exchange_through;
use common::proxy::Proxy;
use common::*;

/// Heartbeat (and JSON ping) every second, dropped after 3 s of silence.
fn lossless_settings() -> hermit_relay::config::Settings {
    let mut s = settings();
    s.heartbeat.interval_secs = 1;
    s.heartbeat.timeout_secs = 2;
    s.pairing.resume_grace_secs = 30;
    s.pairing.ack_interval_ms = 100;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_cut_of_the_client_loses_no_input_or_output() {
    let server = TestServer::start(lossless_settings());
    let agent_proxy = Proxy::start(server.port).await;
    let client_proxy = Proxy::start(server.port).await;
    let cut = client_proxy.cut(Duration::from_millis(1200), Duration::from_millis(2000));
    let (_, client_resumes) =
        exchange_through(&server, 150, cut, &agent_proxy, &client_proxy).await;
    assert!(client_resumes >= 1, "the cut was noticed and resumed from");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_of_the_client_longer_than_the_heartbeat_timeout_loses_nothing() {
    let server = TestServer::start(lossless_settings());
    let agent_proxy = Proxy::start(server.port).await;
    let client_proxy = Proxy::start(server.port).await;
    // Past interval + timeout: the relay gives the client up as lost and keeps its
    // attachment's output for it.
    let cut = client_proxy.cut(Duration::from_millis(1200), Duration::from_millis(5000));
    let (_, client_resumes) =
        exchange_through(&server, 200, cut, &agent_proxy, &client_proxy).await;
    assert!(client_resumes >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_of_the_agent_longer_than_the_heartbeat_timeout_loses_nothing() {
    let server = TestServer::start(lossless_settings());
    let agent_proxy = Proxy::start(server.port).await;
    let client_proxy = Proxy::start(server.port).await;
    let cut = agent_proxy.cut(Duration::from_millis(1200), Duration::from_millis(5000));
    let (agent_resumes, _) = exchange_through(&server, 200, cut, &agent_proxy, &client_proxy).await;
    assert!(agent_resumes >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_acknowledges_is_told_and_dropped_with_memory_bounded() {
    let mut s = lossless_settings();
    s.limits.max_message_bytes = 64 * 1024;
    s.limits.max_outbound_bytes = 4 * 1024 * 1024;
    s.pairing.replay_window_bytes = 2 * 1024 * 1024;
    let server = TestServer::start(s);
    let ada = owner(&server, "ada@example.com").await;
    let mut agent = common::account::agent(&server, &ada, &["s1"]).await;
    let mut client = server.connect("/ws/client").await;
    send(
        &mut client,
        serde_json::json!({"type": "auth", "token": ada.access, "ack": true,
                           "clientId": uuid::Uuid::new_v4().to_string()}),
    )
    .await;
    assert_eq!(
        common::account::recv_type(&mut client, "authenticated").await["type"],
        "authenticated"
    );
    let attach =
        serde_json::json!({"type": "attach", "machineId": ada.machine_id, "sessionId": "s1"});
    send(&mut client, attach).await;
    let attached = common::account::recv_type(&mut client, "attached").await;
    assert_eq!(attached["resumed"], false, "{attached}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_before = rss_bytes();
    // The client reads everything but never acknowledges: its window fills.
    let reader = tokio::spawn(async move {
        let mut told = None;
        while let Some(msg) = next_raw(&mut client).await {
            if msg.contains("REPLAY_WINDOW_FULL") {
                told = Some(msg);
            }
        }
        told
    });
    let chunk = "o".repeat(32 * 1024);
    // 12 MiB of output: six times the window; the client must be gone well before.
    for _ in 0..400 {
        let output = serde_json::json!({"type": "data", "sessionId": "s1", "data": chunk});
        send(&mut agent, output).await;
    }
    let told = tokio::time::timeout(WAIT, reader)
        .await
        .expect("the client's socket is closed")
        .unwrap();
    let told = told.expect("the client was told REPLAY_WINDOW_FULL before the close");
    assert!(told.contains("\"error\""), "{told}");
    let growth = rss_bytes().saturating_sub(rss_before);
    assert!(growth < 48 * 1024 * 1024, "RSS grew {} MiB", growth >> 20);
    // The agent is unaffected: it still answers and its machine is still online.
    eventually_machine(&server, &ada, |m| m["online"] == true).await;
}
