//! The home's end of a tunnel: a virtual connection for a side on another node — a real
//! connection actor of its endpoint over a loopback TCP socket — and the task that speaks
//! WebSocket (as a client) on the other end of that socket, relaying between it and the
//! gateway.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use actix_codec::Framed;
use actix_http::ws::{self, CloseCode, CloseReason};
use actix_rt::net::TcpStream;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use super::{Home, Open, TunnelIn, Tunnels, CLOSE, DOWN, TUNNEL_QUEUE};
use crate::cluster::Envelope;
use crate::ids::{Departure, Endpoint, NodeId};
use crate::relay::delivery::lock;
use crate::relay::socket::{Opened, Socket};
use crate::transport::Killable;

/// How long a tunnel waits for its virtual connection's answer to a close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Opens a virtual connection for the side of `envelope` (an `OPEN`) and starts its
/// tunnel. If it cannot be opened, the gateway is told the connection was cut.
pub(super) async fn open(tunnels: &Tunnels, envelope: Envelope, home: &Home) {
    let (gateway, route) = (envelope.from, envelope.route);
    let opened = match serde_json::from_slice::<Open>(&envelope.body) {
        Ok(open) => start(open, home, tunnels).await,
        Err(_) => None,
    };
    let Some((framed, first, moved)) = opened else {
        let _ = tunnels.send(&gateway, CLOSE, &route, Bytes::new());
        return;
    };
    let (tx, rx) = mpsc::channel(TUNNEL_QUEUE);
    lock(&tunnels.0.tunnels).insert(route.clone(), (gateway.clone(), tx));
    let tunnels = tunnels.clone();
    actix_rt::spawn(async move {
        relay(&tunnels, framed, rx, &gateway, &route, first, &moved).await;
        lock(&tunnels.0.tunnels).remove(&route);
    });
}

/// A virtual connection's client end, the side's first message, and the flag that tells
/// the connection its side moved.
type Started = (Framed<TcpStream, ws::Codec>, String, Arc<AtomicBool>);

/// A loopback socket pair; the server end becomes the side's connection actor.
async fn start(open: Open, home: &Home, tunnels: &Tunnels) -> Option<Started> {
    let endpoint = Endpoint::from_route(&open.endpoint)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.ok()?;
    let addr = listener.local_addr().ok()?;
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (client, (server, _)) = (client.ok()?, accepted.ok()?);
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let settings = home.settings.snapshot();
    let limits = &settings.limits;
    let mut admission = home.connections.admit(open.ip, endpoint).ok()?;
    let moved = admission.watch_moves();
    let upgraded = crate::transport::take(
        Killable::new(server),
        &[],
        limits.max_message_bytes,
        limits.max_outbound_bytes,
    )?;
    let opened = Opened {
        socket: Socket::new(admission, upgraded.link),
        inbound: upgraded.inbound,
        settings: Arc::clone(&settings),
    };
    (home.start)(endpoint, opened, tunnels);
    actix_rt::spawn(upgraded.writer);
    let codec = ws::Codec::new()
        .client_mode()
        .max_size(limits.max_message_bytes);
    Some((Framed::new(client, codec), open.first, moved))
}

/// Relays between the virtual connection and the gateway until either ends. A close frame
/// of the virtual connection goes to the gateway, and its answer waits for the side's own
/// (the gateway's [`TunnelIn::Gone`]): what the side sent before it saw the close frame
/// still reaches the virtual connection, as it would reach a connection of this node.
async fn relay(
    tunnels: &Tunnels,
    mut framed: Framed<TcpStream, ws::Codec>,
    mut from_gateway: mpsc::Receiver<TunnelIn>,
    gateway: &NodeId,
    route: &str,
    first: String,
    moved: &AtomicBool,
) {
    let down = |kind: &str, body: Bytes| tunnels.send(gateway, kind, route, body).is_ok();
    if framed.send(ws::Message::Text(first.into())).await.is_err() {
        down(CLOSE, Bytes::new());
        return;
    }
    // The virtual connection sent its close frame; the side's answer is awaited, until
    // `answer_by` at the latest.
    let mut closing = false;
    let mut answer_by = tokio::time::Instant::now();
    loop {
        tokio::select! {
            message = from_gateway.recv() => match message {
                Some(TunnelIn::Text(text)) => {
                    let Ok(text) = bytestring::ByteString::try_from(text) else { break };
                    if framed.send(ws::Message::Text(text)).await.is_err() {
                        down(CLOSE, Bytes::new());
                        return;
                    }
                }
                Some(TunnelIn::Gone(Departure::Clean)) if closing => {
                    let _ = framed.send(ws::Message::Close(None)).await;
                    return;
                }
                Some(TunnelIn::Gone(Departure::Clean)) => {
                    let bye = ws::Message::Close(Some(CloseReason::from(CloseCode::Normal)));
                    if framed.send(bye).await.is_ok() {
                        // Let the virtual connection answer, so it ends as a clean close.
                        let _ = tokio::time::timeout(CLOSE_WAIT, async {
                            while let Some(Ok(frame)) = framed.next().await {
                                if matches!(frame, ws::Frame::Close(_)) {
                                    break;
                                }
                            }
                        })
                        .await;
                    }
                    return;
                }
                // Moved, lost, or cut here: dropping the socket cuts the virtual connection
                // (a moved side's is told first, so it waits for the side elsewhere).
                Some(TunnelIn::Gone(Departure::Moved)) => {
                    moved.store(true, Relaxed);
                    return;
                }
                Some(TunnelIn::Gone(Departure::Lost)) | None => return,
            },
            () = tokio::time::sleep_until(answer_by), if closing => return,
            frame = framed.next(), if !closing => match frame {
                Some(Ok(ws::Frame::Text(text))) => {
                    if !down(DOWN, text) {
                        return;
                    }
                }
                Some(Ok(ws::Frame::Ping(payload))) => {
                    if framed.send(ws::Message::Pong(payload)).await.is_err() {
                        down(CLOSE, Bytes::new());
                        return;
                    }
                }
                Some(Ok(ws::Frame::Close(reason))) => {
                    let body = reason.map_or_else(Bytes::new, |reason| {
                        let code: u16 = reason.code.into();
                        let text = reason.description.unwrap_or_default();
                        Bytes::from(format!("{code} {text}"))
                    });
                    down(CLOSE, body);
                    closing = true;
                    answer_by = tokio::time::Instant::now() + CLOSE_WAIT * 2;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    down(CLOSE, Bytes::new());
                    return;
                }
            },
        }
    }
    down(CLOSE, Bytes::new());
}
