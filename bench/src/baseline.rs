//! The cost floor: a minimal relay of the same pairing protocol on plain tokio and
//! tokio-tungstenite — no actors, no config, no limits, no database. It parses and
//! re-encodes `data` exactly as the relay does, so the comparison is of the machinery.
//! Built only for the benchmark.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

const ALPHABET: [char; 28] = [
    '3', '4', '6', '7', '8', '9', 'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'J', 'K', 'L', 'M', 'N',
    'P', 'Q', 'R', 'T', 'U', 'V', 'W', 'X', 'Y',
];

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Incoming<'a> {
    Join {
        code: String,
    },
    Data {
        #[serde(borrow)]
        payload: std::borrow::Cow<'a, str>,
    },
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Outgoing<'a> {
    Registered {
        code: &'a str,
        #[serde(rename = "expiresAt")]
        expires_at: u64,
    },
    Joined {
        #[serde(rename = "sessionId")]
        session_id: &'a str,
    },
    Data {
        payload: &'a str,
    },
}

type Tx = UnboundedSender<Message>;
/// Where a connection's data goes once paired.
type PartnerSlot = Arc<Mutex<Option<Tx>>>;

#[derive(Default)]
struct State {
    /// Code → (mac's writer, mac's partner slot).
    waiting: Mutex<HashMap<String, (Tx, PartnerSlot)>>,
}

/// Serves on 127.0.0.1:`port` until SIGTERM or SIGINT, then exits cleanly (so a profiler
/// writes its output). `workers == 1`: one thread does everything (a current-thread
/// runtime, the counted mode's floor); otherwise a multi-thread runtime with `workers`.
pub fn run(port: u16, workers: usize) -> anyhow::Result<()> {
    let runtime = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()?
    };
    runtime.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = serve(listener) => {}
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        anyhow::Ok(())
    })?;
    // Open connections' tasks are dropped with the runtime.
    drop(runtime);
    Ok(())
}

/// Accepts connections until the future is dropped.
async fn serve(listener: TcpListener) {
    let state = Arc::new(State::default());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, Arc::clone(&state)));
    }
}

// The callback's error type is tungstenite's, not ours to shrink.
#[allow(clippy::result_large_err)]
async fn connection(stream: TcpStream, state: Arc<State>) {
    let mut path = String::new();
    // tungstenite's default 128 KiB read buffer per socket is not the floor; 4 KiB is
    // what a lean relay would choose, and what makes this a fair idle-memory baseline.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let ws = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        |req: &Request, res: Response| {
            path = req.uri().path().to_owned();
            Ok(res)
        },
        Some(config),
    )
    .await;
    let Ok(ws) = ws else { return };
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = unbounded_channel::<Message>();
    tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if sink.send(msg).await.is_err() {
                break;
            }
        }
    });
    let partner: PartnerSlot = Arc::default();
    if path == "/mac" {
        let code: String = nanoid::nanoid!(6, &ALPHABET);
        let text = serde_json::to_string(&Outgoing::Registered {
            code: &code,
            expires_at: 0,
        })
        .unwrap();
        state
            .waiting
            .lock()
            .unwrap()
            .insert(code, (tx.clone(), Arc::clone(&partner)));
        let _ = tx.send(Message::text(text));
    }
    while let Some(Ok(msg)) = stream.next().await {
        let Message::Text(text) = msg else { continue };
        match serde_json::from_str::<Incoming>(&text) {
            Ok(Incoming::Data { payload }) => {
                let out = serde_json::to_string(&Outgoing::Data { payload: &payload }).unwrap();
                if let Some(partner) = partner.lock().unwrap().as_ref() {
                    let _ = partner.send(Message::text(out));
                }
            }
            Ok(Incoming::Join { code }) => {
                let found = state.waiting.lock().unwrap().remove(code.trim());
                if let Some((mac_tx, mac_partner)) = found {
                    *mac_partner.lock().unwrap() = Some(tx.clone());
                    *partner.lock().unwrap() = Some(mac_tx.clone());
                    let joined = serde_json::to_string(&Outgoing::Joined {
                        session_id: "00000000-0000-4000-8000-000000000000",
                    })
                    .unwrap();
                    let _ = tx.send(Message::text(joined.clone()));
                    let _ = mac_tx.send(Message::text(joined));
                }
            }
            Err(_) => {}
        }
    }
}
