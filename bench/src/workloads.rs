//! The fixed workloads of the counted mode: an exact number of round trips or pairings,
//! each finished (echoed, closed) before the next step, so two runs of different lengths
//! differ only by the extra work. Each marks where its measured phase starts and ends.
//! Timeouts are generous: the server runs under valgrind.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Mutex, Semaphore};

use crate::load::{close, connect, next_json, pair, pair_across, Ws};
use crate::lossless::{self, next_data, Side};
use crate::valgrind::Marker;

/// How long any one step may take under valgrind before the run is abandoned.
const STEP: Duration = Duration::from_secs(300);

/// Connections opened at once while filling the registry with waiting macs.
const CONNECTING: usize = 16;

/// The output of `step`, or an error naming `what` if it takes longer than [`STEP`].
async fn within<T>(what: &str, step: impl std::future::Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(STEP, step)
        .await
        .map_err(|_| anyhow::anyhow!("{what}: no answer in {} s", STEP.as_secs()))
}

/// One pair relays `round_trips` messages of `payload` bytes from mac to browser and back,
/// at most `in_flight` unanswered at a time; then both sides close. Every round trip is
/// two relayed messages. `lossless`: both sides in lossless mode, numbering their `data`
/// and acknowledging in batches (`lossless.rs`). The mac connects to `port`, the browser
/// to `browser_port` (another node of a cluster, or the same). The measured phase is the
/// messages; returns how long it took.
pub async fn round_trips(
    port: u16,
    browser_port: u16,
    marker: Marker,
    round_trips: u64,
    payload: usize,
    in_flight: usize,
    lossless: bool,
) -> anyhow::Result<Duration> {
    let pairing = async {
        if lossless {
            anyhow::ensure!(
                port == browser_port,
                "lossless pairs are made on one server"
            );
            lossless::pair(port, 0).await
        } else {
            pair_across(port, browser_port, 0).await
        }
    };
    let (mac, browser) = within("pairing", pairing).await??;
    marker.mark().await?;
    let started = Instant::now();
    // The browser echoes exactly `round_trips` messages, then hands its socket back.
    let echo = tokio::spawn(async move {
        let (mut tx, mut rx) = browser.split();
        let mut side = Side::new(lossless);
        for _ in 0..round_trips {
            let msg = within("echo", next_data(&mut rx)).await??;
            if let Some(ack) = side.received(&msg)? {
                tx.send(ack).await?;
            }
            tx.send(side.data(msg["payload"].as_str().unwrap_or_default()))
                .await?;
        }
        anyhow::Ok(rx.reunite(tx)?)
    });
    let (tx, mut rx) = mac.split();
    // The sending task sends the data, the receiving loop the acks.
    let tx = Arc::new(Mutex::new(tx));
    let permits = Arc::new(Semaphore::new(in_flight));
    let (sender_tx, sender_permits) = (Arc::clone(&tx), Arc::clone(&permits));
    let sender = tokio::spawn(async move {
        let text = "t".repeat(payload);
        let mut side = Side::new(lossless);
        for _ in 0..round_trips {
            sender_permits.acquire().await?.forget();
            sender_tx.lock().await.send(side.data(&text)).await?;
        }
        anyhow::Ok(())
    });
    let mut side = Side::new(lossless);
    for _ in 0..round_trips {
        let msg = within("round trip", next_data(&mut rx)).await??;
        permits.add_permits(1);
        if let Some(ack) = side.received(&msg)? {
            tx.lock().await.send(ack).await?;
        }
    }
    sender.await??;
    let tx = Arc::into_inner(tx).context("the sender still holds the socket")?;
    let mac = rx.reunite(tx.into_inner())?;
    let browser = echo.await??;
    marker.mark().await?;
    let took = started.elapsed();
    close_pair(mac, browser).await?;
    settle().await;
    Ok(took)
}

/// Opens `waiting` macs that each get a code and makes one pairing (so the server is up
/// and warm), then `pairings` complete pairings one after the other (connect mac,
/// `registered`, `join`, both `joined`, close both), waits `hold` more, then closes the
/// waiting macs. The measured phase is the pairings and the hold; returns how long it took.
pub async fn pairings(
    port: u16,
    marker: Marker,
    pairings: u32,
    waiting: u32,
    hold: Duration,
) -> anyhow::Result<Duration> {
    let held = open_waiting(port, waiting).await?;
    let (mac, browser) = within("pairing", pair(port, 0)).await??;
    close_pair(mac, browser).await?;
    marker.mark().await?;
    let started = Instant::now();
    for i in 0..pairings {
        let (mac, browser) = within("pairing", pair(port, i * 2)).await??;
        close_pair(mac, browser).await?;
    }
    tokio::time::sleep(hold).await;
    marker.mark().await?;
    let took = started.elapsed();
    futures_util::stream::iter(held)
        .map(|ws| within("closing a waiting mac", close(ws)))
        .buffer_unordered(CONNECTING)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<()>>()?;
    settle().await;
    Ok(took)
}

/// Closes the mac, then the browser, each once the server has answered the one before.
async fn close_pair(mac: Ws, browser: Ws) -> anyhow::Result<()> {
    within("closing the mac", close(mac)).await?;
    within("closing the browser", close(browser)).await
}

/// Gives the server a moment to finish tearing down the last connections before it is
/// stopped, so that work falls inside every run alike.
async fn settle() {
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// `n` macs connected, each told its code, left waiting (their sockets not read further).
async fn open_waiting(port: u16, n: u32) -> anyhow::Result<Vec<Ws>> {
    let opened = futures_util::stream::iter(0..n)
        .map(|i| async move {
            let mut mac = within("connecting a waiting mac", connect(port, "/mac", i)).await??;
            let registered = within("a waiting mac's code", next_json(&mut mac)).await??;
            anyhow::ensure!(registered["type"] == "registered", "no code: {registered}");
            Ok(mac)
        })
        .buffer_unordered(CONNECTING)
        .collect::<Vec<_>>()
        .await;
    opened.into_iter().collect()
}
