//! Direct links between nodes: what one node sends another goes over a TCP connection
//! from the sender to the receiver, not through Redis. Redis still says who is alive and
//! where each node listens (its heartbeat carries the address and a secret, see
//! [`Advert`]); the envelopes themselves cross one socket, written by one task per peer, in
//! the order they were sent.
//!
//! A link carries one direction: the sender connects, says who it is and proves it read
//! the receiver's heartbeat (`HERMIT-LINK/1 <from> <to> <secret>\n`), then writes frames:
//! a 4-byte big-endian length and an envelope's wire form ([`Envelope::encode`]). A frame of
//! length 0 says goodbye: the sender leaves and sent everything. Either end gives the link
//! up on a timeout, an error, or a frame it cannot read.
//!
//! What a link that breaks held is lost, on both ends alike: the sender reports the
//! routes it could not write and tells its own inboxes [`ClusterEvent::Broken`] (every
//! route through that node is cut), then connects again when it next has something to
//! send; the receiver tells its inboxes the same when the sender comes back on a new link
//! after one that ended without a goodbye — before anything the new link carries — so no
//! route continues past a gap. A node that died is reported by its heartbeat
//! (`NodeDown`), as before.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

use super::inbox::ClusterEvent;
use super::outbox::Outgoing;
use super::{lock, Cluster, ClusterError, Envelope};
use crate::ids::NodeId;
use crate::metrics::METRICS;

/// The first word of a link's greeting, with the link protocol's version.
const GREETING: &str = "HERMIT-LINK/1";
/// The longest greeting read before the link is refused.
const MAX_GREETING: usize = 512;
/// Connections accepted from other nodes at once, greeting or linked; past it new ones are
/// closed at once. Other nodes need one each; the rest is room for a peer that reconnects.
const MAX_INBOUND: usize = 256;
/// Batches waiting for one peer's link; past it a batch is dropped and its routes lost
/// (the link is stalled: every write is bounded by `cluster.redis_timeout_ms`).
const MAX_BATCHES: usize = 1024;
/// Bytes gathered into one write to a peer.
const MAX_WRITE: usize = 256 * 1024;

/// Where a node listens for links and the secret a linking node must show, as its
/// heartbeat carries them: `up <host:port> <secret>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Advert {
    /// How the other nodes reach this node's listener.
    pub addr: String,
    /// What a node that links to this one must say (it read it in Redis).
    pub secret: String,
}

impl Advert {
    /// The heartbeat value of a running node with this advert.
    pub fn heartbeat(&self) -> String {
        format!("{} {} {}", super::membership::UP, self.addr, self.secret)
    }

    /// The advert in a running node's heartbeat value, if it has one.
    pub fn parse(heartbeat: &str) -> Option<Self> {
        let mut words = heartbeat.split(' ');
        let (up, addr, secret) = (words.next()?, words.next()?, words.next()?);
        (up == super::membership::UP && words.next().is_none()).then(|| Self {
            addr: addr.to_owned(),
            secret: secret.to_owned(),
        })
    }
}

/// This node's links: its listener's advert, the other nodes' adverts, one writer per
/// peer it sends to, and what it knows of the links other nodes opened to it.
pub(super) struct Links {
    /// Where the listener is bound, and `cluster.link_advertise`.
    pub bound: SocketAddr,
    advertise: String,
    redis_url: String,
    /// The secret a node linking to this one must show.
    secret: String,
    /// This node's advert, once its address is known.
    own: std::sync::OnceLock<Advert>,
    listener: Mutex<Option<std::net::TcpListener>>,
    /// The other nodes' adverts, as their last heartbeats said.
    adverts: Mutex<HashMap<NodeId, Advert>>,
    /// One writer task per peer written to: its queue and its task.
    writers: Mutex<HashMap<NodeId, Writer>>,
    /// The link now read from each node, by its number; an older one still open stops.
    inbound: Mutex<HashMap<NodeId, (u64, Arc<AtomicBool>)>>,
    /// Nodes whose last link to this one ended without a goodbye.
    unclean: Mutex<HashSet<NodeId>>,
    connections: Arc<Semaphore>,
}

struct Writer {
    queue: mpsc::Sender<Vec<Outgoing>>,
    task: JoinHandle<()>,
}

impl Links {
    /// Binds this node's listener to `listen`; its advert is `advertise` (a host, with the
    /// bound port, or host:port), or when empty this host's address on the way to
    /// `redis_url`'s server, with the bound port (see [`Self::own`]).
    pub fn bind(listen: &str, advertise: &str, redis_url: &str) -> Result<Self, ClusterError> {
        let refused = |what: String| ClusterError::Link(what);
        let listener = std::net::TcpListener::bind(listen)
            .map_err(|err| refused(format!("cannot listen on {listen}: {err}")))?;
        listener
            .set_nonblocking(true)
            .map_err(|err| refused(err.to_string()))?;
        let bound = listener
            .local_addr()
            .map_err(|err| refused(err.to_string()))?;
        Ok(Self {
            bound,
            advertise: advertise.to_owned(),
            redis_url: redis_url.to_owned(),
            secret: nanoid::nanoid!(32),
            own: std::sync::OnceLock::new(),
            listener: Mutex::new(Some(listener)),
            adverts: Mutex::default(),
            writers: Mutex::default(),
            inbound: Mutex::default(),
            unclean: Mutex::default(),
            connections: Arc::new(Semaphore::new(MAX_INBOUND)),
        })
    }

    /// This node's advert; an error while its address cannot be told (Redis's host does
    /// not resolve yet): the heartbeat fails, and the next one asks again.
    pub fn own(&self) -> Result<&Advert, ClusterError> {
        if let Some(own) = self.own.get() {
            return Ok(own);
        }
        let port = self.bound.port();
        let addr = if !self.advertise.is_empty() {
            if has_port(&self.advertise) {
                self.advertise.clone()
            } else {
                format!("{}:{port}", self.advertise)
            }
        } else if !self.bound.ip().is_unspecified() {
            self.bound.to_string()
        } else {
            let ip = route_to(&self.redis_url).ok_or_else(|| {
                ClusterError::Link(
                    "cannot tell this host's address on the way to Redis (set \
                     cluster.link_advertise)"
                        .into(),
                )
            })?;
            SocketAddr::new(ip, port).to_string()
        };
        Ok(self.own.get_or_init(|| Advert {
            addr,
            secret: self.secret.clone(),
        }))
    }

    /// Records what `node`'s heartbeat says; a node that came back with another advert
    /// (restarted) gets a new writer.
    pub fn seen(&self, node: &NodeId, advert: Option<Advert>) {
        let mut adverts = lock(&self.adverts);
        let changed = match &advert {
            Some(advert) => adverts.get(node) != Some(advert),
            None => adverts.contains_key(node),
        };
        if !changed {
            return;
        }
        match advert {
            Some(advert) => adverts.insert(node.clone(), advert),
            None => adverts.remove(node),
        };
        drop(adverts);
        // Its writer, if any, wrote to a node that is gone: it ends (sending a goodbye
        // if its link still stands).
        lock(&self.writers).remove(node);
    }
}

impl Cluster {
    /// Accepts links from other nodes until the node stops (on the cluster's thread).
    pub(super) async fn listen(self: Arc<Self>) {
        let Some(listener) = lock(&self.links.listener).take() else {
            return;
        };
        let listener = match TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(err) => {
                tracing::error!(%err, "cannot accept links from other nodes");
                return;
            }
        };
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let Ok(permit) = Arc::clone(&self.links.connections).try_acquire_owned() else {
                tracing::warn!(%peer, "too many links from other nodes: one refused");
                continue;
            };
            let this = Arc::clone(&self);
            actix_rt::spawn(async move {
                this.read_link(stream).await;
                drop(permit);
            });
        }
    }

    /// Reads one link from another node: its greeting, then its frames into the inboxes.
    async fn read_link(&self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let mut stream = BufReader::with_capacity(MAX_GREETING, stream);
        let greeting = tokio::time::timeout(self.settings.redis_timeout(), async {
            let mut line = Vec::new();
            let mut limited = (&mut stream).take(MAX_GREETING as u64);
            limited.read_until(b'\n', &mut line).await.ok()?;
            let line = String::from_utf8(line).ok()?;
            self.greeted(line.strip_suffix('\n')?)
        });
        let Ok(Some(from)) = greeting.await else {
            tracing::debug!("a link without a valid greeting was refused");
            return;
        };
        let (number, retired) = self.link_opened(&from);
        // What came after the greeting in the same read is the first frames' start.
        let buf = BytesMut::from(stream.buffer());
        let clean = self
            .read_frames(stream.into_inner(), buf, &from, &retired)
            .await;
        let mut inbound = lock(&self.links.inbound);
        if inbound
            .get(&from)
            .is_some_and(|(current, _)| *current == number)
        {
            inbound.remove(&from);
            if !clean {
                lock(&self.links.unclean).insert(from);
            }
        }
    }

    /// The node a greeting comes from, if it is a node's greeting to this one.
    fn greeted(&self, line: &str) -> Option<NodeId> {
        let mut words = line.split(' ');
        let (greeting, from, to, secret) =
            (words.next()?, words.next()?, words.next()?, words.next()?);
        let secret_ok = bool::from(secret.as_bytes().ct_eq(self.links.secret.as_bytes()));
        let from = NodeId::parse(from)?;
        (greeting == GREETING
            && words.next().is_none()
            && to == self.node.as_str()
            && secret_ok
            && from != self.node)
            .then_some(from)
    }

    /// Records a new link from `from`: it replaces any older one, and when the last one
    /// ended without a goodbye (or still stands), what it carried may be lost — every
    /// inbox hears [`ClusterEvent::Broken`] before anything this link carries.
    fn link_opened(&self, from: &NodeId) -> (u64, Arc<AtomicBool>) {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let number = NEXT.fetch_add(1, Relaxed);
        let retired = Arc::new(AtomicBool::new(false));
        let older = lock(&self.links.inbound).insert(from.clone(), (number, Arc::clone(&retired)));
        let unclean = lock(&self.links.unclean).remove(from);
        if let Some((_, older)) = &older {
            older.store(true, Relaxed);
        }
        if older.is_some() || unclean {
            tracing::info!(node = %from, "a link from a node broke: what it carried is lost");
            self.event(ClusterEvent::Broken(from.clone()));
        }
        (number, retired)
    }

    /// Reads frames until the link ends: true if it ended with a goodbye.
    async fn read_frames(
        &self,
        mut stream: TcpStream,
        mut buf: BytesMut,
        from: &NodeId,
        retired: &AtomicBool,
    ) -> bool {
        let max = self.settings.max_inbox_bytes;
        buf.reserve(64 * 1024);
        loop {
            while buf.len() >= 4 {
                let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                if len == 0 {
                    return true;
                }
                if len > max {
                    METRICS.cluster.dropped("undecodable");
                    tracing::warn!(node = %from, len, "a frame too big on a link: it is cut");
                    return false;
                }
                if buf.len() < 4 + len {
                    buf.reserve(4 + len - buf.len());
                    break;
                }
                buf.advance(4);
                let frame = buf.split_to(len).freeze();
                if retired.load(Relaxed) {
                    return false;
                }
                match Envelope::decode(frame) {
                    Some(envelope) if envelope.from == *from => self.receive(envelope),
                    _ => {
                        METRICS.cluster.dropped("undecodable");
                        return false;
                    }
                }
            }
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(64 * 1024);
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
        }
    }

    /// Hands `batch` (envelopes for `node`, in order) to its link's writer. Returns the
    /// batch when it cannot be queued (its link is stalled).
    pub(super) fn write_to(
        self: &Arc<Self>,
        node: &NodeId,
        batch: Vec<Outgoing>,
    ) -> Result<(), Vec<Outgoing>> {
        let mut writers = lock(&self.links.writers);
        if !writers.contains_key(node) {
            let (queue, batches) = mpsc::channel(MAX_BATCHES);
            let task = actix_rt::spawn(Arc::clone(self).write_link(node.clone(), batches));
            writers.insert(node.clone(), Writer { queue, task });
        }
        // unwrap: just made if it was not there.
        let writer = writers.get(node).unwrap();
        writer.queue.try_send(batch).map_err(|err| match err {
            mpsc::error::TrySendError::Full(batch) | mpsc::error::TrySendError::Closed(batch) => {
                batch
            }
        })
    }

    /// One peer's writer: writes what is queued for it, in order, connecting when it has
    /// no link; a goodbye when its queue closes (the node leaves, or the peer went away).
    async fn write_link(self: Arc<Self>, node: NodeId, mut batches: mpsc::Receiver<Vec<Outgoing>>) {
        let mut link: Option<TcpStream> = None;
        let mut wire = Vec::with_capacity(64 * 1024);
        let timeout = self.settings.redis_timeout();
        while let Some(first) = batches.recv().await {
            let mut taken = vec![first];
            wire.clear();
            frame(&taken[0], &mut wire);
            while wire.len() < MAX_WRITE {
                let Ok(more) = batches.try_recv() else { break };
                frame(&more, &mut wire);
                taken.push(more);
            }
            if link.is_none() {
                // Boxed: it may read Redis, and the Redis client's futures are kilobytes,
                // which every write would otherwise move around.
                let connecting = tokio::time::timeout(timeout, Box::pin(self.connect(&node)));
                link = match connecting.await {
                    Ok(Ok(stream)) => Some(stream),
                    Ok(Err(err)) => {
                        tracing::warn!(node = %node, %err, "cannot link to a node");
                        None
                    }
                    Err(_) => None,
                };
            }
            let written = match link.as_mut() {
                Some(stream) => tokio::time::timeout(timeout, stream.write_all(&wire))
                    .await
                    .map_err(|_| "timed out".to_owned())
                    .and_then(|written| written.map_err(|err| err.to_string())),
                None => Err("no link".to_owned()),
            };
            let envelopes: usize = taken.iter().map(Vec::len).sum();
            let mut bytes = 0;
            for item in taken.iter().flatten() {
                bytes += item.size();
            }
            match written {
                Ok(()) => {
                    METRICS.cluster.sent.fetch_add(envelopes as u64, Relaxed);
                    METRICS.cluster.sent_bytes.fetch_add(bytes as u64, Relaxed);
                    if envelopes > 1 {
                        METRICS.cluster.batches.fetch_add(1, Relaxed);
                    }
                }
                Err(err) => {
                    tracing::warn!(node = %node, %err, envelopes, "a link to a node broke: what it carried is lost");
                    METRICS.cluster.errors.fetch_add(1, Relaxed);
                    link = None;
                    self.lost_all(taken.into_iter().flatten());
                    self.event(ClusterEvent::Broken(node.clone()));
                }
            }
            self.outbox.release(bytes);
        }
        if let Some(mut stream) = link {
            let _ = tokio::time::timeout(timeout, async {
                stream.write_all(&[0; 4]).await?;
                stream.shutdown().await
            })
            .await;
        }
    }

    /// Opens a link to `node` as its heartbeat advertises it (read now if this node has
    /// not seen it yet: a node that just started may be written to before the next
    /// heartbeat surveys it).
    async fn connect(&self, node: &NodeId) -> Result<TcpStream, String> {
        let known = lock(&self.links.adverts).get(node).cloned();
        let advert = match known {
            Some(advert) => advert,
            None => {
                let heartbeat = self
                    .get(&self.node_key(node))
                    .await
                    .map_err(|err| err.to_string())?;
                heartbeat
                    .as_deref()
                    .and_then(Advert::parse)
                    .ok_or("the node is not in the cluster")?
            }
        };
        let mut stream = TcpStream::connect(&advert.addr)
            .await
            .map_err(|err| format!("cannot reach {}: {err}", advert.addr))?;
        let _ = stream.set_nodelay(true);
        let greeting = format!("{GREETING} {} {node} {}\n", self.node, advert.secret);
        stream
            .write_all(greeting.as_bytes())
            .await
            .map_err(|err| err.to_string())?;
        Ok(stream)
    }

    /// Reports every envelope of `items` lost (their routes are cut).
    pub(super) fn lost_all(&self, items: impl IntoIterator<Item = Outgoing>) {
        for item in items {
            METRICS.cluster.dropped("publish_failed");
            self.lost(Some((&item.envelope.kind, item.envelope.route)));
        }
    }

    /// Ends every writer, each with a goodbye on its link, waiting at most `within`.
    pub(super) async fn close_links(&self, within: Duration) {
        let writers: Vec<Writer> = lock(&self.links.writers).drain().map(|(_, w)| w).collect();
        let tasks = writers.into_iter().map(|writer| {
            drop(writer.queue);
            writer.task
        });
        let _ = tokio::time::timeout(within, futures_util::future::join_all(tasks)).await;
    }
}

/// Appends `batch` to `wire`, each envelope as one frame.
fn frame(batch: &[Outgoing], wire: &mut Vec<u8>) {
    for item in batch {
        // An envelope is at most `cluster.max_queued_bytes` long (≤ 2^34 by the config's
        // ranges, but the outbox refuses more than it holds): it fits in 32 bits when
        // the receiver's inbox can take it at all.
        let len = u32::try_from(item.size()).unwrap_or(u32::MAX);
        wire.extend_from_slice(&len.to_be_bytes());
        item.envelope.encode_into(wire);
    }
}

/// Whether `addr` ends in a port (`host:port`, not a bare IPv6 address).
fn has_port(addr: &str) -> bool {
    addr.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && port.parse::<u16>().is_ok()
            && (!host.contains(':') || host.ends_with(']'))
    })
}

/// This host's address on the route to the Redis server of `redis_url` (no packet is
/// sent: a UDP socket is only pointed there).
fn route_to(redis_url: &str) -> Option<std::net::IpAddr> {
    let rest = redis_url.strip_prefix("redis://")?;
    let authority = rest.split('/').next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let target = if has_port(host_port) {
        host_port.to_owned()
    } else {
        format!("{host_port}:6379")
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&target)
        .ok()?
        .next()?;
    let socket = UdpSocket::bind(if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })
    .ok()?;
    socket.connect(addr).ok()?;
    Some(socket.local_addr().ok()?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_advert_survives_the_heartbeat() {
        let advert = Advert {
            addr: "10.0.0.5:4100".into(),
            secret: "s3cret".into(),
        };
        assert_eq!(Advert::parse(&advert.heartbeat()), Some(advert));
        assert_eq!(Advert::parse("up"), None);
        assert_eq!(Advert::parse("left"), None);
        assert_eq!(Advert::parse("up a b c"), None);
    }

    #[test]
    fn an_address_is_advertised_with_the_bound_port_unless_it_has_one() {
        assert!(has_port("relay-2:4100"));
        assert!(has_port("[::1]:4100"));
        assert!(!has_port("relay-2"));
        assert!(!has_port("::1"));
        let own = |listen, advertise, redis| {
            let links = Links::bind(listen, advertise, redis).unwrap();
            let port = links.bound.port();
            links.own().map(|own| (own.addr.clone(), port))
        };
        let (addr, port) = own("127.0.0.1:0", "relay-2", "redis://127.0.0.1:6379").unwrap();
        assert_eq!(addr, format!("relay-2:{port}"));
        let (addr, _) = own("127.0.0.1:0", "relay-2:7400", "redis://127.0.0.1:6379").unwrap();
        assert_eq!(addr, "relay-2:7400");
        let (addr, port) = own("0.0.0.0:0", "", "redis://:pw@127.0.0.1:6379/0").unwrap();
        assert_eq!(addr, format!("127.0.0.1:{port}"));
        assert!(own("0.0.0.0:0", "", "redis://no-such-host.invalid:6379").is_err());
        assert!(Links::bind("nonsense", "", "redis://127.0.0.1").is_err());
    }
}
