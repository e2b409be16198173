//! A browser that stops reading while its mac floods costs the relay bounded memory, is
//! dropped, and its mac is told. Alone in its file so no other test moves the RSS.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_that_stops_reading_is_dropped_with_bounded_memory_and_its_mac_is_told() {
    let mut s = settings();
    s.limits.max_outbound_bytes = MIB;
    s.limits.max_message_bytes = 256 * 1024;
    let server = TestServer::start(s);
    let (mac, mut browser, _) = pair(&server).await;
    // Let allocator and buffers settle before the baseline.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_before = rss_bytes();

    // The browser stops reading from here on. The mac floods until it is told.
    let (mut mac_tx, mut mac_rx) = mac.split();
    let told = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let flood = {
        let told = Arc::clone(&told);
        let sent = Arc::clone(&sent);
        tokio::spawn(async move {
            let chunk = "z".repeat(64 * 1024);
            let text = json!({"type": "data", "payload": chunk}).to_string();
            // Bounded: a relay that never drops the browser stops the flood at 256 MiB.
            while !told.load(Ordering::Relaxed) && sent.load(Ordering::Relaxed) < 256 * MIB {
                if mac_tx.send(Message::text(text.clone())).await.is_err() {
                    break;
                }
                sent.fetch_add(text.len(), Ordering::Relaxed);
            }
        })
    };
    let mut peak = rss_before;
    let verdict = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(msg) = mac_rx.next().await {
            peak = peak.max(rss_bytes());
            if let Ok(Message::Text(text)) = msg {
                let msg: serde_json::Value = serde_json::from_str(&text).unwrap();
                if msg["type"] == "error" {
                    return msg["code"].as_str().unwrap_or_default().to_owned();
                }
            }
        }
        String::from("mac connection ended")
    })
    .await
    .expect("the mac is told within 60 s");
    told.store(true, Ordering::Relaxed);
    flood.await.unwrap();
    peak = peak.max(rss_bytes());

    assert_eq!(verdict, "BROWSER_DISCONNECTED");
    // The message that found the outbox full is counted as dropped, by reason.
    let metrics = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dropped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hermit_messages_dropped_total{reason=\"slow_consumer\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(dropped >= 1, "{metrics}");
    let growth = peak.saturating_sub(rss_before);
    let sent = sent.load(Ordering::Relaxed);
    eprintln!(
        "flood sent {} MiB, relay+test RSS grew {} MiB",
        sent / MIB,
        growth / MIB
    );
    // Bound: the browser's 1 MiB outbox, the dispatcher's buffers, one message in flight
    // on each side, and allocator slack — far below what an unbounded relay would hold.
    assert!(growth < 48 * MIB, "RSS grew {} MiB", growth / MIB);

    // The browser's socket is really closed: reading drains what the kernel holds, then ends.
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match browser.next().await {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the slow browser's socket was not closed");
}
