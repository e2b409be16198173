//! The home's end of a tunnel: a virtual connection for a side on another node — a real
//! connection actor of its endpoint, with no socket of its own (`transport::fed`) — and the
//! task that relays what it writes to the gateway and what the side does to it. Both run
//! on a worker thread, as the node's own connections do: the one that read the tunnel's
//! lane (where its gateway side runs on its node, see `crate::workers`), else the next in
//! turn.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_http::ws::{CloseCode, CloseReason};
use bytes::Bytes;
use tokio::sync::mpsc;

use super::{Home, Open, Tunnel, Tunnels, CLOSE, DOWN, TUNNEL_QUEUE};
use crate::cluster::Envelope;
use crate::ids::{Departure, Endpoint, NodeId};
use crate::relay::delivery::lock;
use crate::relay::socket::{Opened, Socket};
use crate::transport::{Feed, Inbound, Intake, Sent};
use crate::workers::Workers;

/// How long a tunnel waits for its virtual connection's answer to a close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Opens a virtual connection for the side of `envelope` (an `OPEN`) and starts its
/// tunnel. If it cannot be opened, the gateway is told the connection was cut. A route is
/// its gateway's (it starts with the gateway's id) and names one tunnel: an `OPEN` for a
/// route of another node, or for one that is open, is ignored (no node sends one).
pub(super) fn open(tunnels: &Tunnels, envelope: Envelope, home: &Home) {
    let (gateway, route) = (envelope.from, envelope.route);
    let its_own = route
        .strip_prefix(gateway.as_str())
        .is_some_and(|rest| rest.starts_with('/'));
    if !its_own || lock(&tunnels.0.tunnels).get(&route).is_some() {
        tracing::debug!(node = %gateway, route, "an OPEN for a route not its own, or open, ignored");
        return;
    }
    let opened = serde_json::from_slice::<Open>(&envelope.body)
        .ok()
        .and_then(|open| admit(open, home));
    let Some((endpoint, connection, queue, feed, moved)) = opened else {
        let _ = tunnels.send(&gateway, CLOSE, &route, Bytes::new());
        return;
    };
    let (control, departures) = mpsc::channel(2);
    let opened = Instant::now();
    let tunnel = Tunnel {
        gateway: gateway.clone(),
        opened,
        queue: queue.clone(),
        control,
    };
    lock(&tunnels.0.tunnels).insert(route.clone(), tunnel);
    let place = Place {
        tunnels: tunnels.clone(),
        gateway,
        route,
        opened,
        finished: false,
    };
    let start = Arc::clone(&home.start);
    let task = async move {
        let mut place = place;
        let Place {
            tunnels,
            gateway,
            route,
            ..
        } = &place;
        start(endpoint, connection, tunnels);
        relay(tunnels, feed, queue, departures, gateway, route, &moved).await;
        place.finished = true;
    };
    // On the worker reading its lane, where the envelopes of the tunnel arrive and leave.
    if Workers::current() > 0 {
        drop(actix_rt::spawn(task));
    } else {
        home.workers.spawn(task);
    }
}

/// A tunnel's place in this node's map, for as long as its task runs: given up when the
/// task ends — and if it ended unfinished (its worker stopped, before or while it ran),
/// with the gateway told that the connection was cut, so the side does not stay on with
/// nothing behind it.
struct Place {
    tunnels: Tunnels,
    gateway: NodeId,
    route: String,
    opened: Instant,
    finished: bool,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut held = lock(&self.tunnels.0.tunnels);
        // Unless it was cut already (the gateway was told then, and the route may be
        // another tunnel's now).
        let ours = held
            .get(&self.route)
            .is_some_and(|tunnel| tunnel.opened == self.opened);
        if ours {
            held.remove(&self.route);
        }
        drop(held);
        if ours && !self.finished {
            let _ = self
                .tunnels
                .send(&self.gateway, CLOSE, &self.route, Bytes::new());
        }
    }
}

/// What a virtual connection starts from: its endpoint and admitted connection, its way
/// in (holding the side's first message), the tunnel's end of it, and the flag that tells
/// the connection its side moved.
type Admitted = (Endpoint, Opened, Intake, Feed, Arc<AtomicBool>);

/// Admits the side's connection, to be started on a worker.
fn admit(open: Open, home: &Home) -> Option<Admitted> {
    let endpoint = Endpoint::from_route(&open.endpoint)?;
    let settings = home.settings.snapshot();
    let limits = &settings.limits;
    let mut admission = home.connections.admit(open.ip, endpoint).ok()?;
    let moved = admission.watch_moves();
    let (link, inbound, queue, feed) = crate::transport::fed(
        limits.max_message_bytes,
        limits.max_outbound_bytes,
        TUNNEL_QUEUE,
    );
    queue.text(Bytes::from(open.first)).ok()?;
    let opened = Opened {
        socket: Socket::new(admission, link),
        inbound,
        settings: Arc::clone(&settings),
    };
    Some((endpoint, opened, queue, feed, moved))
}

/// Relays what the virtual connection writes to the gateway, and the side's departure to
/// the virtual connection, until either ends. (The side's messages go straight into the
/// connection's queue.) A close frame of the virtual connection goes to the gateway, and
/// its answer waits for the side's own (the gateway's [`super::GONE`]): what the side sent
/// before it saw the close frame still reaches the virtual connection, as it would reach a
/// connection of this node.
async fn relay(
    tunnels: &Tunnels,
    mut feed: Feed,
    queue: Intake,
    mut departures: mpsc::Receiver<Departure>,
    gateway: &NodeId,
    route: &str,
    moved: &AtomicBool,
) {
    let down = |kind: &str, body: Bytes| tunnels.send(gateway, kind, route, body).is_ok();
    // The virtual connection sent its close frame; the side's answer is awaited, until
    // `answer_by` at the latest.
    let mut closing = false;
    let mut answer_by = tokio::time::Instant::now();
    loop {
        tokio::select! {
            departure = departures.recv() => match departure {
                Some(Departure::Clean) if closing => {
                    let _ = queue.offer(Inbound::Close(None));
                    return;
                }
                Some(Departure::Clean) => {
                    let bye = Inbound::Close(Some(CloseReason::from(CloseCode::Normal)));
                    // Let the virtual connection answer, so it ends as a clean close.
                    let _ = tokio::time::timeout(CLOSE_WAIT, async {
                        if queue.give(bye).await {
                            while let Some(sent) = feed.next().await {
                                if matches!(sent, Sent::Close(_)) {
                                    break;
                                }
                            }
                        }
                    })
                    .await;
                    return;
                }
                // Moved or lost: letting go ends the virtual connection after what the side
                // sent before (a moved side's is told first, so it waits for the side
                // elsewhere).
                Some(Departure::Moved) => {
                    moved.store(true, Relaxed);
                    return;
                }
                Some(Departure::Lost) => return,
                // Cut here (the gateway was told): nothing more of it is read.
                None => {
                    feed.cut();
                    return;
                }
            },
            () = tokio::time::sleep_until(answer_by), if closing => return,
            sent = feed.next(), if !closing => match sent {
                Some(Sent::Text(text)) => {
                    if !down(DOWN, text) {
                        return;
                    }
                }
                // Its heartbeat: the tunnel stands, so the side is there.
                Some(Sent::Ping) => {
                    let _ = queue.offer(Inbound::Pong);
                }
                Some(Sent::Close(reason)) => {
                    let body = reason.map_or_else(Bytes::new, |(code, text)| {
                        Bytes::from(format!("{code} {text}"))
                    });
                    down(CLOSE, body);
                    closing = true;
                    answer_by = tokio::time::Instant::now() + CLOSE_WAIT * 2;
                }
                None => {
                    down(CLOSE, Bytes::new());
                    return;
                }
            },
        }
    }
}
