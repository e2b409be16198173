//! Direct links between nodes: what one node sends another goes over a TCP connection
//! from the sender to the receiver, not through Redis. Redis still says who is alive and
//! where each node listens (its heartbeat carries the address and a secret, see
//! `peers::Advert`); the envelopes themselves cross one socket, written by one task per peer, in
//! the order they were sent.
//!
//! A link carries one direction: the sender connects, says who it is and proves it read
//! the receiver's heartbeat (`HERMIT-LINK/2 <from> <to> <secret>[ <lane>]\n`; version 1 had
//! no lanes, and a node refuses a version not its own: one cluster runs one), then writes
//! frames: a 4-byte big-endian length and an envelope's wire form ([`Envelope::encode`]). A
//! frame of length 0 says goodbye: the sender leaves and sent everything. Either end gives
//! the link up on a timeout, an error, or a frame it cannot read.
//!
//! **Lanes.** One node links to another once per *lane*: lane 0 (no lane in the greeting)
//! carries what [`Cluster::send`] sends, through the outbox, and is written and read on
//! the cluster's thread; lane `n` (1 to [`MAX_LANES`]) carries what
//! [`Cluster::send_on`] sends on it, and is written on the sender's worker of slot `n` and
//! read on the receiver's worker of slot `n` where they have one (else on the cluster's
//! thread), so a tunnel whose two ends run on slot `n` of their nodes relays without
//! waking another thread (`crate::workers`). Envelopes sent on one lane arrive in order;
//! a tunnel sends all of its own on one lane, both ways.
//!
//! What a link that breaks held is lost, on both ends alike: the sender reports the
//! routes it could not write and tells its own inboxes [`ClusterEvent::Broken`] with the
//! instant it broke, then connects again when it next has something to send; the
//! receiver tells its inboxes the same when the sender comes back on a new link of that
//! lane after one that ended without a goodbye — before anything the new link carries. A
//! link of any lane that breaks breaks the whole: every route through that node is cut. The instant is
//! when the sender closed the old link (it wrote nothing after), or, for a link cut or
//! failed, when the new one arrives (the sender may have written to the old one until it
//! noticed). Every route through that node that stood by then is cut (and its other end
//! told, see `relay::tunnel`), so no route continues past a gap. A node that died is
//! reported by its heartbeat (`NodeDown`), as before.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::inbox::ClusterEvent;
use super::outbox::Outgoing;
use super::peers::{lock, Advert, Finished, Lane, Stop, Writer};
use super::{Cluster, Envelope};
use crate::ids::NodeId;
use crate::metrics::METRICS;
use crate::workers::MAX_LANES;

/// The first word of a link's greeting, with the link protocol's version.
const GREETING: &str = "HERMIT-LINK/2";

/// How a link from another node ended.
enum Ended {
    /// With a goodbye: its sender left and sent everything.
    Goodbye,
    /// Closed by its sender without a goodbye, at that instant, after a whole frame:
    /// everything it wrote was read.
    Closed(Instant),
    /// Cut (an error, a frame it may not send, a newer link): what its sender wrote may be
    /// lost, until it noticed.
    Cut,
}
/// The longest greeting read before the link is refused.
const MAX_GREETING_BYTES: usize = 512;
/// Batches waiting for one peer's link of lane 0; past it a batch is dropped and its routes
/// lost (the link is stalled: every write is bounded by `cluster.redis_timeout_ms`).
const MAX_BATCHES: usize = 1024;
/// Envelopes waiting for one peer's link of another lane, each its own batch: its writer
/// runs on the senders' thread, so a burst queues whole before it writes (the outbox's
/// byte bound holds too).
const MAX_LANE_BATCHES: usize = 64 * 1024;
/// Bytes gathered into one write to a peer.
const MAX_WRITE: usize = 256 * 1024;
/// A link's read buffer; one that grew for a big frame shrinks back to it once empty.
const READ_BUFFER: usize = 64 * 1024;

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
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of descriptors, say: wait rather than spin.
                    tracing::warn!(%err, "cannot accept a link");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(greeting) = Arc::clone(&self.links.greeting).try_acquire_owned() else {
                tracing::warn!(%peer, "too many links greeting at once: one refused");
                continue;
            };
            let this = Arc::clone(&self);
            actix_rt::spawn(async move { this.read_link(stream, greeting).await });
        }
    }

    /// Reads one link from another node: its greeting, then — on the worker of its lane,
    /// if this node has one — its frames.
    async fn read_link(
        self: Arc<Self>,
        stream: TcpStream,
        greeting: tokio::sync::OwnedSemaphorePermit,
    ) {
        self.tune(&stream);
        let mut stream = BufReader::with_capacity(MAX_GREETING_BYTES, stream);
        let greeted = tokio::time::timeout(self.settings.redis_timeout(), async {
            let mut line = Vec::new();
            let mut limited = (&mut stream).take(MAX_GREETING_BYTES as u64);
            limited.read_until(b'\n', &mut line).await.ok()?;
            let line = String::from_utf8(line).ok()?;
            self.greeted(line.strip_suffix('\n')?)
        });
        let Ok(Some((from, lane))) = greeted.await else {
            tracing::debug!("a link without a valid greeting was refused");
            return;
        };
        if self.stopped.load(Relaxed) {
            return;
        }
        drop(greeting);
        let Ok(linked) = Arc::clone(&self.links.linked).try_acquire_owned() else {
            tracing::warn!(node = %from, "too many links from other nodes: one refused");
            return;
        };
        // What came after the greeting in the same read is the first frames' start.
        let buf = BytesMut::from(stream.buffer());
        let stream = stream.into_inner();
        let (number, stop, done) = self.link_opened(&from, lane).await;
        // Made here, so that a read that never runs still ends the link.
        let reader = Reader {
            cluster: Arc::clone(&self),
            from,
            lane,
            number,
            ended: None,
            _linked: linked,
            _finished: Finished(done),
        };
        let read = move |stream: TcpStream| async move {
            let cluster = Arc::clone(&reader.cluster);
            let ended = cluster
                .read_frames(stream, buf, &reader.from, lane, &stop)
                .await;
            reader.end(ended);
        };
        if lane > 0 && self.workers.alive(lane) {
            let Ok(stream) = stream.into_std() else {
                return;
            };
            // Read on the lane's worker; one that ended meanwhile drops the link (and its
            // sender sees it break).
            self.workers.spawn_on(lane, async move {
                if let Ok(stream) = TcpStream::from_std(stream) {
                    read(stream).await;
                }
            });
        } else {
            read(stream).await;
        }
    }

    /// Forgets link `number` from `from` on `lane` (unless a newer one replaced it), and
    /// remembers how it `ended`.
    fn link_ended(&self, from: NodeId, lane: Lane, number: u64, ended: Ended) {
        let key = (from, lane);
        let mut inbound = lock(&self.links.inbound);
        if inbound
            .get(&key)
            .is_some_and(|(current, _, _)| *current == number)
        {
            inbound.remove(&key);
            let (from, lane) = key;
            match ended {
                Ended::Goodbye => {}
                Ended::Closed(at) => self.links.ended_unclean(from, lane, Some(at)),
                Ended::Cut => self.links.ended_unclean(from, lane, None),
            }
        }
    }

    /// The node a greeting comes from and its lane, if it is a node's greeting to this one.
    fn greeted(&self, line: &str) -> Option<(NodeId, Lane)> {
        let mut words = line.split(' ');
        let (greeting, from, to, secret) =
            (words.next()?, words.next()?, words.next()?, words.next()?);
        let secret_ok = bool::from(secret.as_bytes().ct_eq(self.links.secret.as_bytes()));
        // Only a node that read this one's heartbeat is told of, not anyone who connects.
        if greeting != GREETING && greeting.starts_with("HERMIT-LINK/") && secret_ok {
            tracing::warn!(
                version = greeting,
                "a node of another version tried to link (this one speaks {GREETING}): \
                 every node of a cluster must run one version"
            );
            return None;
        }
        let lane = match words.next() {
            None => 0,
            Some(lane) => lane
                .parse()
                .ok()
                .filter(|lane| (1..=MAX_LANES).contains(lane))?,
        };
        let from = NodeId::parse(from)?;
        (greeting == GREETING
            && words.next().is_none()
            && to == self.node.as_str()
            && secret_ok
            && from != self.node)
            .then_some((from, lane))
    }

    /// Records a new link from `from` on `lane`: it replaces any older one, and when the
    /// last one ended without a goodbye (or still stands), what it carried may be lost —
    /// every inbox hears [`ClusterEvent::Broken`], and every topic read straight from the
    /// lanes handles it, before anything this link carries.
    async fn link_opened(&self, from: &NodeId, lane: Lane) -> (u64, Arc<Stop>, Arc<Stop>) {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let number = NEXT.fetch_add(1, Relaxed);
        let (stop, done) = (Arc::new(Stop::default()), Arc::new(Stop::default()));
        let key = (from.clone(), lane);
        let reading = (number, Arc::clone(&stop), Arc::clone(&done));
        let older = lock(&self.links.inbound).insert(key.clone(), reading);
        // Halted meanwhile (it stops the links it finds): this one reads nothing either.
        if self.stopped.load(Relaxed) {
            stop.stop();
        }
        let unclean = lock(&self.links.unclean).remove(&key);
        if let Some((_, older, ended)) = &older {
            older.stop();
            // Its reader (maybe on another thread) hands over nothing more once the break
            // is told: it ends first (within the Redis timeout).
            let _ = tokio::time::timeout(self.settings.redis_timeout(), ended.wait()).await;
        }
        // The older link breaks now. One its sender closed without a goodbye broke then:
        // it wrote nothing after. One cut here, or by an error, breaks now too: its
        // sender may have written to it until it noticed.
        let broke = match (older, unclean) {
            (Some(_), _) | (None, Some(None)) => Some(Instant::now()),
            (None, Some(Some(at))) => Some(at),
            (None, None) => None,
        };
        if let Some(at) = broke {
            tracing::info!(node = %from, lane, "a link from a node broke: what it carried is lost");
            let broken = ClusterEvent::Broken(from.clone(), at);
            self.event(broken.clone());
            self.direct_event(broken);
        }
        (number, stop, done)
    }

    /// Reads frames until the link ends or is stopped: true if it ended with a goodbye.
    async fn read_frames(
        &self,
        mut stream: TcpStream,
        mut buf: BytesMut,
        from: &NodeId,
        lane: Lane,
        stop: &Stop,
    ) -> Ended {
        let max = self.settings.max_inbox_bytes;
        loop {
            while buf.len() >= 4 {
                let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                if len == 0 {
                    return Ended::Goodbye;
                }
                if len > max {
                    METRICS.cluster.dropped("undecodable");
                    tracing::warn!(node = %from, len, "a frame too big on a link: it is cut");
                    return Ended::Cut;
                }
                if buf.len() < 4 + len {
                    buf.reserve(4 + len - buf.len());
                    break;
                }
                if stop.stopped() {
                    return Ended::Cut;
                }
                // Copied out: an envelope kept waiting must not pin the read buffer.
                let frame = Bytes::copy_from_slice(&buf[4..4 + len]);
                buf.advance(4 + len);
                match Envelope::decode(frame) {
                    Some(envelope) if envelope.from == *from => self.receive_on(lane, envelope),
                    _ => {
                        METRICS.cluster.dropped("undecodable");
                        return Ended::Cut;
                    }
                }
            }
            if buf.is_empty() && buf.capacity() > 4 * READ_BUFFER {
                buf = BytesMut::with_capacity(READ_BUFFER);
            } else if buf.capacity() - buf.len() < 4096 {
                buf.reserve(READ_BUFFER);
            }
            tokio::select! {
                read = stream.read_buf(&mut buf) => match read {
                    // The sender closed it: everything it wrote was read (unless it
                    // closed in the middle of a frame).
                    Ok(0) if buf.is_empty() => return Ended::Closed(Instant::now()),
                    Ok(0) | Err(_) => return Ended::Cut,
                    Ok(_) => {}
                },
                () = stop.wait() => return Ended::Cut,
            }
        }
    }

    /// Hands `batch` (envelopes for `node`, in order) to the writer of its link on `lane`,
    /// starting one — on the lane's worker, else on the cluster's thread — if there is
    /// none. Returns the batch when it cannot be queued (its link is stalled, or the node
    /// is leaving).
    pub(super) fn write_to(
        self: &Arc<Self>,
        node: &NodeId,
        lane: Lane,
        mut batch: Vec<Outgoing>,
    ) -> Result<(), Vec<Outgoing>> {
        let key = (node.clone(), lane);
        let mut writers = lock(&self.links.writers);
        // Under the lock: a writer started after the node closed its links (or lanes)
        // would never write its goodbye.
        let closing =
            self.links.closing.load(Relaxed) || (lane > 0 && self.links.lanes_closed.load(Relaxed));
        if closing {
            return Err(batch);
        }
        // Twice at most: a writer whose worker stopped is replaced once.
        for _ in 0..2 {
            if !writers.contains_key(&key) {
                writers.insert(key.clone(), self.start_writer(node, lane));
            }
            // unwrap: inserted just above if it was not there.
            let writer = writers.get(&key).unwrap();
            match writer.queue.try_send(batch) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(full)) => return Err(full),
                Err(mpsc::error::TrySendError::Closed(refused)) => {
                    // Its task ended (its worker stopped): another takes over.
                    writers.remove(&key);
                    batch = refused;
                }
            }
        }
        Err(batch)
    }

    /// Starts the writer of `node`'s link on `lane`: on the lane's worker, else (lane 0, or
    /// no such worker running) on the cluster's thread. One that cannot start is dropped
    /// unrun: its queue is closed.
    fn start_writer(self: &Arc<Self>, node: &NodeId, lane: Lane) -> Writer {
        let key = (node.clone(), lane);
        let (queue, batches) = mpsc::channel(match lane {
            0 => MAX_BATCHES,
            _ => MAX_LANE_BATCHES,
        });
        let retired = Arc::new(Stop::default());
        let done = Arc::new(Stop::default());
        let previous = lock(&self.links.retiring).remove(&key);
        // Made here, so that a writer dropped before it first runs still hands back what
        // was queued for it.
        let held = Held {
            cluster: Arc::clone(self),
            batches,
            taken: Vec::new(),
            bytes: 0,
            _finished: Finished(Arc::clone(&done)),
        };
        let task =
            Arc::clone(self).write_link(node.clone(), lane, held, Arc::clone(&retired), previous);
        if lane > 0 && self.workers.alive(lane) {
            self.workers.spawn_on(lane, task);
        } else {
            self.spawn(task);
        }
        Writer {
            queue,
            done,
            retired,
        }
    }

    /// One peer's writer on one lane: writes what is queued for it, in order, connecting
    /// when it has no link; a goodbye when its queue closes (the node leaves). It starts
    /// once the `previous` writer of that peer and lane has ended (bounded), so a lane
    /// never has two; `held` says when it ends. Dropped before its end (its worker stopped),
    /// it reports what it held and what waited lost, and releases their bytes.
    async fn write_link(
        self: Arc<Self>,
        node: NodeId,
        lane: Lane,
        mut held: Held,
        retired: Arc<Stop>,
        previous: Option<Arc<Stop>>,
    ) {
        let timeout = self.settings.redis_timeout();
        if let Some(previous) = previous {
            let _ = tokio::time::timeout(2 * timeout, previous.wait()).await;
        }
        let mut link: Option<TcpStream> = None;
        let mut wire = Vec::with_capacity(64 * 1024);
        while let Some(first) = held.batches.recv().await {
            held.take(first);
            while held.bytes < MAX_WRITE {
                let Ok(more) = held.batches.try_recv() else {
                    break;
                };
                held.take(more);
            }
            let (taken, bytes) = (std::mem::take(&mut held.taken), held.bytes);
            if retired.stopped() {
                // The peer is gone: nothing more is written to it.
                link = None;
                self.lost_all(taken.into_iter().flatten());
                held.release();
                continue;
            }
            wire.clear();
            taken.iter().for_each(|batch| frame(batch, &mut wire));
            held.taken = taken;
            let linked = link.is_some();
            if link.is_none() {
                // Boxed: it may read Redis, and the Redis client's futures are kilobytes,
                // which every write would otherwise move around.
                let connecting = tokio::time::timeout(timeout, Box::pin(self.connect(&node, lane)));
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
            let taken = std::mem::take(&mut held.taken);
            let envelopes: usize = taken.iter().map(Vec::len).sum();
            match written {
                Ok(()) => {
                    METRICS.cluster.sent.fetch_add(envelopes as u64, Relaxed);
                    METRICS.cluster.sent_bytes.fetch_add(bytes as u64, Relaxed);
                    if envelopes > 1 {
                        METRICS.cluster.batches.fetch_add(1, Relaxed);
                    }
                }
                Err(err) => {
                    METRICS.cluster.errors.fetch_add(1, Relaxed);
                    self.lost_all(taken.into_iter().flatten());
                    // A link that stood broke: what it carried before may be lost too.
                    if linked {
                        tracing::warn!(node = %node, lane, %err, "a link to a node broke: what it carried is lost");
                        self.event(ClusterEvent::Broken(node.clone(), Instant::now()));
                    }
                    link = None;
                }
            }
            held.release();
        }
        if let Some(mut stream) = link.filter(|_| !retired.stopped()) {
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
    async fn connect(&self, node: &NodeId, lane: Lane) -> Result<TcpStream, String> {
        let advert = match self.links.advert(node) {
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
        self.tune(&stream);
        let greeting = match lane {
            0 => format!("{GREETING} {} {node} {}\n", self.node, advert.secret),
            lane => format!("{GREETING} {} {node} {} {lane}\n", self.node, advert.secret),
        };
        stream
            .write_all(greeting.as_bytes())
            .await
            .map_err(|err| err.to_string())?;
        Ok(stream)
    }

    /// A link's socket options: no Nagle delay, and keepalive probes after a node timeout
    /// of silence, so a link to a host that vanished (no FIN ever comes) ends within about
    /// twice `cluster.node_timeout_secs` instead of holding its reader forever.
    fn tune(&self, stream: &TcpStream) {
        let _ = stream.set_nodelay(true);
        let idle = self.settings.node_timeout();
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(idle)
            .with_interval((idle / 4).max(Duration::from_secs(1)))
            .with_retries(4);
        let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive);
    }

    /// Reports every envelope of `items` lost (their routes are cut).
    pub(super) fn lost_all(&self, items: impl IntoIterator<Item = Outgoing>) {
        for item in items {
            METRICS.cluster.dropped("publish_failed");
            self.lost(Some((&item.envelope.kind, item.envelope.route)));
        }
    }

    /// Ends every writer, each with a goodbye on its link once it wrote what it holds,
    /// waiting at most `within`; no writer starts after.
    pub(super) async fn close_links(&self, within: Duration) {
        self.links.closing.store(true, Relaxed);
        let writers: Vec<Writer> = lock(&self.links.writers).drain().map(|(_, w)| w).collect();
        Self::ended(writers, within).await;
    }

    /// Ends the writers of every lane but 0 as [`Self::close_links`] does, and starts no
    /// more: before the workers stop, which would end them unfinished.
    pub async fn close_lanes(&self) {
        self.links.lanes_closed.store(true, Relaxed);
        let writers: Vec<Writer> = {
            let mut writers = lock(&self.links.writers);
            let lanes: Vec<(NodeId, Lane)> = writers
                .keys()
                .filter(|(_, lane)| *lane > 0)
                .cloned()
                .collect();
            lanes.iter().filter_map(|key| writers.remove(key)).collect()
        };
        Self::ended(writers, self.settings.redis_timeout()).await;
    }

    /// Closes the queues of `writers` and waits at most `within` for them to end.
    async fn ended(writers: Vec<Writer>, within: Duration) {
        let ended: Vec<Arc<Stop>> = writers
            .into_iter()
            .map(|writer| {
                drop(writer.queue);
                writer.done
            })
            .collect();
        let all = futures_util::future::join_all(ended.iter().map(|done| done.wait()));
        let _ = tokio::time::timeout(within, all).await;
    }
}

/// A link being read: when its reader ends — or is dropped unrun, its worker stopped (then
/// the link is taken as cut) — the link is forgotten and its reader's end told.
struct Reader {
    cluster: Arc<Cluster>,
    from: NodeId,
    lane: Lane,
    number: u64,
    ended: Option<Ended>,
    _linked: tokio::sync::OwnedSemaphorePermit,
    _finished: Finished,
}

impl Reader {
    /// The read ended as `ended`: the link is forgotten with it (on drop).
    fn end(mut self, ended: Ended) {
        self.ended = Some(ended);
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let ended = self.ended.take().unwrap_or(Ended::Cut);
        let from = self.from.clone();
        self.cluster.link_ended(from, self.lane, self.number, ended);
    }
}

/// What a writer holds: its queue, the batches it took and is writing, and their bytes
/// (counted in the outbox until written or lost).
struct Held {
    cluster: Arc<Cluster>,
    batches: mpsc::Receiver<Vec<Outgoing>>,
    taken: Vec<Vec<Outgoing>>,
    bytes: usize,
    _finished: Finished,
}

impl Held {
    fn take(&mut self, batch: Vec<Outgoing>) {
        self.bytes += batch.iter().map(Outgoing::size).sum::<usize>();
        self.taken.push(batch);
    }

    /// What it took is written or reported lost: its bytes leave the outbox's count.
    fn release(&mut self) {
        self.cluster.outbox.release(std::mem::take(&mut self.bytes));
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // Ended before its queue closed (its worker stopped): nothing more is taken, and
        // what it held or waited is lost.
        self.batches.close();
        while let Ok(batch) = self.batches.try_recv() {
            self.take(batch);
        }
        let taken = std::mem::take(&mut self.taken);
        self.cluster.lost_all(taken.into_iter().flatten());
        self.release();
    }
}

/// Appends `batch` to `wire`, each envelope as one frame.
fn frame(batch: &[Outgoing], wire: &mut Vec<u8>) {
    for item in batch {
        // The outbox holds at most `cluster.max_queued_bytes`; an envelope longer than 4 GiB
        // gets a length the receiver refuses (it cuts the link, and both sides know).
        let len = u32::try_from(item.size()).unwrap_or(u32::MAX);
        wire.extend_from_slice(&len.to_be_bytes());
        item.envelope.encode_into(wire);
    }
}
