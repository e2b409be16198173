//! What a node knows of its links to and from the other nodes (see `link.rs` for what
//! it does with them): where it listens and what it advertises, the other nodes'
//! adverts, one writer per peer and lane, and the links other nodes opened to it. A leaf:
//! it knows nothing of the [`super::Cluster`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use tokio::sync::{mpsc, Notify, Semaphore};

use super::outbox::Outgoing;
use crate::ids::NodeId;

/// The first word of a running node's heartbeat (its link's advert follows).
pub(super) const UP: &str = "up";
/// Links being greeted at once; past it new connections are closed at once.
const MAX_GREETING: usize = 64;
/// Links (node and lane) remembered as having ended without a goodbye; past it the memory
/// starts over (only a node that knows the secret can add to it; a node gone is forgotten).
const MAX_UNCLEAN: usize = 16 * 1024;

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
        format!("{UP} {} {}", self.addr, self.secret)
    }

    /// The advert in a running node's heartbeat value, if it has one.
    pub fn parse(heartbeat: &str) -> Option<Self> {
        let mut words = heartbeat.split(' ');
        let (up, addr, secret) = (words.next()?, words.next()?, words.next()?);
        (up == UP && words.next().is_none()).then(|| Self {
            addr: addr.to_owned(),
            secret: secret.to_owned(),
        })
    }
}

/// A flag set once, which any number of tasks may wait for: that a task should stop, or
/// that it ended.
#[derive(Debug, Default)]
pub(super) struct Stop {
    flag: AtomicBool,
    notify: Notify,
}

impl Stop {
    /// Sets it, waking every waiter.
    pub fn stop(&self) {
        self.flag.store(true, Relaxed);
        self.notify.notify_waiters();
    }

    /// Whether it is set.
    pub fn stopped(&self) -> bool {
        self.flag.load(Relaxed)
    }

    /// Waits until it is set.
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the flag is read: a `stop` in between is not missed.
            notified.as_mut().enable();
            if self.stopped() {
                return;
            }
            notified.await;
        }
    }
}

/// Sets its flag when dropped: held by a task, it says the task ended — whether it ran
/// to its end or was dropped unrun.
pub(super) struct Finished(pub Arc<Stop>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// A lane of links between two nodes (see `crate::workers`): 0, or a worker's slot.
pub(super) type Lane = usize;

/// A link being read: its number, what stops its reader, and whether its reader ended.
pub(super) type Reading = (u64, Arc<Stop>, Arc<Stop>);

/// One peer's writer on one lane: its queue, whether its task ended, and what retires it.
pub(super) struct Writer {
    pub queue: mpsc::Sender<Vec<Outgoing>>,
    /// Set when its task ended.
    pub done: Arc<Stop>,
    /// Set when the peer is gone (or came back as another process, or this node halts):
    /// what is still queued is reported lost at once instead of written.
    pub retired: Arc<Stop>,
}

/// This node's links.
pub(super) struct Links {
    /// Where the listener is bound.
    pub bound: SocketAddr,
    /// `cluster.link_advertise`, and the Redis URL (whose route tells this host's address).
    advertise: String,
    redis_url: String,
    /// The secret a node linking to this one must show.
    pub secret: String,
    own: OnceLock<Advert>,
    /// Taken by the accepting task when it starts.
    pub listener: Mutex<Option<std::net::TcpListener>>,
    /// The other nodes' adverts, as their heartbeats said.
    adverts: Mutex<HashMap<NodeId, Advert>>,
    /// One writer per peer and lane written to.
    pub writers: Mutex<HashMap<(NodeId, Lane), Writer>>,
    /// Whether a retired writer ended, which the next writer of its peer and lane waits
    /// for (so one lane never has two writers at once).
    pub retiring: Mutex<HashMap<(NodeId, Lane), Arc<Stop>>>,
    /// The link now read from each node on each lane (its number, and what stops its
    /// reader).
    pub inbound: Mutex<HashMap<(NodeId, Lane), Reading>>,
    /// Nodes and lanes whose last link to this one ended without a goodbye, and when its
    /// sender closed it (`None`: cut, so it breaks only when the node links again).
    pub unclean: Mutex<HashMap<(NodeId, Lane), Option<Instant>>>,
    /// Connections being greeted, and linked.
    pub greeting: Arc<Semaphore>,
    pub linked: Arc<Semaphore>,
    /// The node leaves: no new writer starts.
    pub closing: AtomicBool,
    /// The node's workers stop: no new writer of a lane but 0 starts.
    pub lanes_closed: AtomicBool,
}

/// Locks `mutex`, whether or not a holder panicked.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl Links {
    /// Binds this node's listener to `listen`; its advert is `advertise` (a host, with the
    /// bound port, or host:port), or when empty this host's address on the way to
    /// `redis_url`'s server, with the bound port (see [`Self::own`]). At most `max_links`
    /// links from other nodes stand at once (each other node needs one per lane it sends
    /// on; the rest is room for a node that reconnects before its old link is noticed gone).
    pub fn bind(
        listen: &str,
        advertise: &str,
        redis_url: &str,
        max_links: usize,
    ) -> Result<Self, String> {
        let listener = std::net::TcpListener::bind(listen)
            .map_err(|err| format!("cannot listen on {listen}: {err}"))?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let bound = listener.local_addr().map_err(|e| e.to_string())?;
        Ok(Self {
            bound,
            advertise: advertise.to_owned(),
            redis_url: redis_url.to_owned(),
            secret: nanoid::nanoid!(32),
            own: OnceLock::new(),
            listener: Mutex::new(Some(listener)),
            adverts: Mutex::default(),
            writers: Mutex::default(),
            retiring: Mutex::default(),
            inbound: Mutex::default(),
            unclean: Mutex::default(),
            greeting: Arc::new(Semaphore::new(MAX_GREETING)),
            linked: Arc::new(Semaphore::new(max_links)),
            closing: AtomicBool::new(false),
            lanes_closed: AtomicBool::new(false),
        })
    }

    /// This node's advert; an error while its address cannot be told (Redis's host does
    /// not resolve yet): the heartbeat fails, and the next one asks again.
    pub fn own(&self) -> Result<&Advert, String> {
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
            let ip = route_to(&self.redis_url).ok_or(
                "cannot tell this host's address on the way to Redis (set \
                 cluster.link_advertise)",
            )?;
            SocketAddr::new(ip, port).to_string()
        };
        Ok(self.own.get_or_init(|| Advert {
            addr,
            secret: self.secret.clone(),
        }))
    }

    /// `node`'s advert, if its heartbeat was seen.
    pub fn advert(&self, node: &NodeId) -> Option<Advert> {
        lock(&self.adverts).get(node).cloned()
    }

    /// Records what `node`'s heartbeat says (`None`: it is gone). A node gone, or back
    /// with another advert (another process), retires its writers. Its links to this node
    /// are still read: a node taken for gone may be alive (Redis came back empty, say), and
    /// a link it still writes to must not go unread; a dead node's end (a closed socket,
    /// or the keepalive's probes unanswered).
    pub fn seen(&self, node: &NodeId, advert: Option<Advert>) {
        let previous = {
            let mut adverts = lock(&self.adverts);
            match &advert {
                Some(advert) if adverts.get(node) == Some(advert) => return,
                Some(advert) => adverts.insert(node.clone(), advert.clone()),
                None => adverts.remove(node),
            }
        };
        // A first sight changes nothing: a writer may already write to it (it read the
        // advert in Redis itself).
        if advert.is_some() && previous.is_none() {
            return;
        }
        let retired: Vec<((NodeId, Lane), Writer)> = {
            let mut writers = lock(&self.writers);
            let keys: Vec<(NodeId, Lane)> =
                writers.keys().filter(|(n, _)| n == node).cloned().collect();
            keys.into_iter()
                .filter_map(|key| writers.remove(&key).map(|writer| (key, writer)))
                .collect()
        };
        let mut retiring = lock(&self.retiring);
        for (key, writer) in retired {
            writer.retired.stop();
            retiring.insert(key, writer.done);
        }
        if advert.is_none() {
            retiring.retain(|_, done| !done.stopped());
        }
    }

    /// Forgets how `node`'s links ended: it was reported down or gone, which cuts every
    /// route through it, so a link of its that ended unclean has nothing left to break.
    pub fn forget(&self, node: &NodeId) {
        lock(&self.unclean).retain(|(other, _), _| other != node);
    }

    /// Records that `node`'s link of `lane` ended without a goodbye: closed by it at
    /// `closed`, or cut.
    pub fn ended_unclean(&self, node: NodeId, lane: Lane, closed: Option<Instant>) {
        let mut unclean = lock(&self.unclean);
        if unclean.len() >= MAX_UNCLEAN {
            unclean.clear();
        }
        unclean.insert((node, lane), closed);
    }

    /// Stops every writer and reader at once, as a crash would: no goodbye is written,
    /// nor anything still queued.
    pub fn halt(&self) {
        self.closing.store(true, Relaxed);
        for (_, writer) in lock(&self.writers).drain() {
            writer.retired.stop();
        }
        for (_, (_, stop, _)) in lock(&self.inbound).iter() {
            stop.stop();
        }
    }
}

/// Whether `addr` ends in a port (`host:port`, not a bare IPv6 address).
pub(super) fn has_port(addr: &str) -> bool {
    addr.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && port.parse::<u16>().is_ok()
            && (!host.contains(':') || host.ends_with(']'))
    })
}

/// This host's address on the route to the Redis server of `redis_url` (no packet is
/// sent: a UDP socket is only pointed there).
fn route_to(redis_url: &str) -> Option<IpAddr> {
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
            let links = Links::bind(listen, advertise, redis, 64).unwrap();
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
        assert!(Links::bind("nonsense", "", "redis://127.0.0.1", 64).is_err());
    }

    #[tokio::test]
    async fn a_node_gone_or_back_as_another_process_retires_its_writers() {
        let links = Links::bind("127.0.0.1:0", "", "redis://127.0.0.1", 64).unwrap();
        let node = NodeId::parse("peer").unwrap();
        let advert = |secret: &str| Advert {
            addr: "127.0.0.1:1".into(),
            secret: secret.into(),
        };
        let writer = |links: &Links, lane: Lane| {
            let (queue, _) = mpsc::channel(1);
            let retired = Arc::new(Stop::default());
            lock(&links.writers).insert(
                (node.clone(), lane),
                Writer {
                    queue,
                    done: Arc::new(Stop::default()),
                    retired: Arc::clone(&retired),
                },
            );
            retired
        };
        let (first, other_lane) = (writer(&links, 0), writer(&links, 2));
        links.seen(&node, Some(advert("one")));
        links.seen(&node, Some(advert("one")));
        assert!(!first.stopped(), "a first sight keeps the writer");
        links.seen(&node, Some(advert("two")));
        assert!(first.stopped(), "another process: another writer");
        assert!(other_lane.stopped(), "on every lane");
        assert!(lock(&links.retiring).contains_key(&(node.clone(), 2)));
        let second = writer(&links, 1);
        let reader = Arc::new(Stop::default());
        let read = (1, Arc::clone(&reader), Arc::default());
        lock(&links.inbound).insert((node.clone(), 0), read);
        links.seen(&node, None);
        assert!(second.stopped(), "gone: its writer stops");
        assert!(!reader.stopped(), "but its link is read while it stands");
        assert!(lock(&links.writers).is_empty());
        assert_eq!(links.advert(&node), None);
        // Halted: every reader stops too.
        links.halt();
        assert!(reader.stopped());
    }

    #[tokio::test]
    async fn every_waiter_hears_a_stop() {
        let stop = Arc::new(Stop::default());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let stop = Arc::clone(&stop);
                tokio::spawn(async move { stop.wait().await })
            })
            .collect();
        tokio::task::yield_now().await;
        drop(Finished(Arc::clone(&stop)));
        for waiter in waiters {
            tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
                .await
                .expect("woken")
                .unwrap();
        }
        // And one that comes after.
        stop.wait().await;
    }

    #[test]
    fn the_unclean_ends_remembered_are_bounded() {
        let links = Links::bind("127.0.0.1:0", "", "redis://127.0.0.1", 64).unwrap();
        let node = |n: usize| NodeId::parse(&format!("n-{n}")).unwrap();
        for n in 0..MAX_UNCLEAN {
            links.ended_unclean(node(n), 0, None);
        }
        assert_eq!(lock(&links.unclean).len(), MAX_UNCLEAN);
        // One more forgets the others rather than growing: their next links are taken as
        // clean. (Only nodes that read this one's secret can end a link, and a node gone is
        // forgotten, so it takes about a thousand live nodes with every lane ended.)
        let at = std::time::Instant::now();
        links.ended_unclean(node(MAX_UNCLEAN), 1, Some(at));
        let unclean = lock(&links.unclean);
        assert_eq!(unclean.len(), 1);
        assert_eq!(unclean.get(&(node(MAX_UNCLEAN), 1)), Some(&Some(at)));
    }
}
