//! The direct links between nodes (issue 11): who may link to a node, what a link may
//! carry, and a link that breaks under a live pairing. Real nodes, Redis and PostgreSQL; the
//! "other node" of some tests is this test speaking the link protocol over a real socket.

mod common;

use std::time::{Duration, Instant};

use common::cluster::*;
use common::links::*;
use common::lossless::exchange_through;
use common::proxy::Proxy;
use hermit_relay::cluster::{Envelope, Inbound, Inbox};
use hermit_relay::ids::NodeId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A node that surveys the cluster every 5 s (others in the tests: every 200 ms), once
/// it has joined.
async fn slow_surveyor(db: &common::TestDb, redis: &str, prefix: &str) -> TestNode {
    let mut settings = node_settings(db, redis, prefix);
    settings.cluster.heartbeat_ms = 5000;
    settings.cluster.node_timeout_secs = 10;
    let node = TestNode::start(settings);
    eventually(Duration::from_secs(5), "the node to join", || {
        node.cluster.healthy()
    })
    .await;
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_node_that_read_the_secret_links_and_a_link_carries_only_what_it_may() {
    let Some((_db, nodes)) = cluster_of(1, |_| {}).await else {
        return;
    };
    let node = &nodes[0];
    let inbox = node.cluster.inbox("probe").unwrap();
    let (_, secret) = advert(node).await;
    let within = Duration::from_secs(3);

    // A wrong secret: the link is closed, and what it sent is not taken.
    let mut link = link_to(node, "intruder", "not-the-secret").await;
    let _ = link
        .write_all(&frame("intruder", "probe.x", "r", b"wrong"))
        .await;
    assert!(
        closed_within(&mut link, within).await,
        "a wrong secret is refused"
    );
    assert!(next_envelope(&inbox, Duration::from_millis(300))
        .await
        .is_none());

    // A greeting that never comes: closed within the Redis timeout (500 ms in tests).
    let (addr, _) = advert(node).await;
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    assert!(
        closed_within(&mut silent, within).await,
        "a silent link is dropped"
    );

    // The secret: its frames reach the topic's inbox, as sent, from the node it named.
    let mut link = link_to(node, "other-node", &secret).await;
    write_frame(&mut link, "other-node", "probe.x", "r1", b"first").await;
    write_frame(&mut link, "other-node", "probe.x", "r2", b"second").await;
    for (route, body) in [("r1", &b"first"[..]), ("r2", b"second")] {
        let envelope = next_envelope(&inbox, within)
            .await
            .expect("the frame arrives");
        assert_eq!(envelope.from.as_str(), "other-node");
        assert_eq!((envelope.route.as_str(), &envelope.body[..]), (route, body));
    }

    // An envelope that claims to come from another node than the link's: cut.
    write_frame(&mut link, "third-node", "probe.x", "r3", b"forged").await;
    assert!(
        closed_within(&mut link, within).await,
        "a forged sender cuts the link"
    );
    assert!(next_envelope(&inbox, Duration::from_millis(300))
        .await
        .is_none());

    // A frame longer than the inbox holds: cut before it is read.
    let mut link = link_to(node, "other-node", &secret).await;
    link.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    assert!(
        closed_within(&mut link, within).await,
        "an oversized frame cuts the link"
    );

    // The node still takes a good link after all that.
    let mut link = link_to(node, "other-node", &secret).await;
    write_frame(&mut link, "other-node", "probe.x", "r4", b"again").await;
    let envelope = next_envelope(&inbox, within)
        .await
        .expect("the frame arrives");
    assert_eq!(envelope.route, "r4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_that_breaks_under_lossless_sides_cuts_their_tunnels_and_they_lose_nothing() {
    // Mac on A, browser on B (tunnelled to A). Mid-exchange a second link "from A", on the
    // tunnel's lane, reaches B: B's link from A is replaced, so what it was carrying may be
    // lost — B cuts every tunnel through A, A's next write on the old link fails and A does
    // the same. The sides see lost connections, resume, and nothing is lost, duplicated or
    // reordered.
    let Some((_db, nodes)) = cluster_of(2, resumable).await else {
        return;
    };
    let (a, b) = (&nodes[0], &nodes[1]);
    let mac_proxy = Proxy::start(a.port).await;
    let browser_proxy = Proxy::start(b.port).await;
    let a_id = a.cluster.node_id().as_str().to_owned();
    let mut watch_b = b.cluster.inbox("watch").unwrap();
    let break_link = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (_, secret) = advert(b).await;
        let lanes = lanes_from(b, a);
        assert!(!lanes.is_empty(), "the tunnel goes on a worker's lane");
        let mut impostors = Vec::new();
        for lane in &lanes {
            impostors.push(link_on(b, &a_id, &secret, lane).await);
        }
        let broken = next_broken(&mut watch_b, Duration::from_secs(3)).await;
        assert_eq!(
            broken.as_deref(),
            Some(a_id.as_str()),
            "B hears its link from A broke"
        );
        drop(impostors);
    };
    let (mac_resumes, browser_resumes) =
        exchange_through(150, break_link, &mac_proxy, &browser_proxy).await;
    assert!(
        mac_resumes + browser_resumes >= 1,
        "the cut tunnel was resumed from"
    );
}

/// The node named by the next `Broken` event in `inbox`, if one comes within `within`.
async fn next_broken(inbox: &mut std::sync::Arc<Inbox>, within: Duration) -> Option<String> {
    tokio::time::timeout(within, async {
        loop {
            if let Inbound::Event(hermit_relay::cluster::ClusterEvent::Broken(node, _)) =
                inbox.recv().await
            {
                return node.as_str().to_owned();
            }
        }
    })
    .await
    .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_answers_another_it_has_not_surveyed_yet() {
    // A surveys the cluster every 5 s, B every 200 ms: B knows A at once, A learns of B
    // only later. A browser on B joins a code of A's: A must answer B before it surveyed
    // it, finding B's link address in Redis itself.
    let (Some(redis), Some(db)) = (redis_url(), common::TestDb::postgres()) else {
        return;
    };
    let prefix = prefix();
    let a = slow_surveyor(&db, &redis, &prefix).await;
    let b = TestNode::start(node_settings(&db, &redis, &prefix));
    let a_id = a.cluster.node_id().clone();
    eventually(Duration::from_secs(5), "B to know A", || {
        b.cluster.healthy() && b.cluster.nodes().contains(&a_id)
    })
    .await;
    assert!(
        !a.cluster.nodes().contains(b.cluster.node_id()),
        "A has not surveyed B yet: the test would not test"
    );
    let mut mac = a.connect("/mac").await;
    let registered = common::recv(&mut mac).await;
    let code = registered["code"].as_str().unwrap().to_owned();
    let mut browser = b.connect("/browser").await;
    common::send(
        &mut browser,
        serde_json::json!({"type": "join", "code": code}),
    )
    .await;
    let joined = tokio::time::timeout(Duration::from_secs(3), common::recv(&mut browser))
        .await
        .expect("the browser hears back from A through B");
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(common::recv(&mut mac).await, joined, "the mac hears it too");
    common::exchange(&mut mac, &mut browser, "early", 20).await;
    assert!(
        !a.cluster.nodes().contains(b.cluster.node_id()),
        "A surveyed B meanwhile: the test did not test"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_leaves_says_goodbye_and_one_that_crashes_is_a_broken_link() {
    goodbye_or_broken(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_leaves_says_goodbye_on_its_lanes_before_its_workers_stop() {
    // The same on lane 1, whose writer runs on the sending node's first worker: a node
    // that leaves ends it with a goodbye before its workers stop (which would drop it
    // unfinished, and its successor's link would be reported broken).
    goodbye_or_broken(1).await;
}

async fn goodbye_or_broken(lane: usize) {
    // Processes named "a-fixed" one after the other each send B three envelopes on `lane`.
    // One that left ended its link with a goodbye: its successor's envelopes come with
    // nothing reported broken. One that crashed did not: B reports the link from "a-fixed"
    // broken before its successor's first envelope. B surveys every 5 s, so it does not see
    // the node gone in between (which would cut the tunnels through it anyway).
    let (Some(redis), Some(db)) = (redis_url(), common::TestDb::postgres()) else {
        return;
    };
    let prefix = prefix();
    let b = slow_surveyor(&db, &redis, &prefix).await;
    let inbox = b.cluster.inbox("watch").unwrap();
    // When each link B reported broken broke.
    let broke_at = std::sync::Mutex::new(Vec::new());
    // What B hears next: "message <body>" or "broken <node>"; other events skipped.
    let next = || async {
        let heard = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match inbox.recv().await {
                    Inbound::Message(e) => {
                        return format!("message {}", String::from_utf8_lossy(&e.body))
                    }
                    Inbound::Event(hermit_relay::cluster::ClusterEvent::Broken(node, at)) => {
                        broke_at.lock().unwrap().push(at);
                        return format!("broken {node}");
                    }
                    _ => {}
                }
            }
        });
        heard.await.expect("B hears something")
    };
    let mut crashed = false;
    let mut relinked = Instant::now();
    for (round, crash) in [false, true, false].into_iter().enumerate() {
        let mut settings = node_settings(&db, &redis, &prefix);
        settings.cluster.node_id = "a-fixed".to_owned();
        let a = TestNode::start(settings);
        eventually(Duration::from_secs(5), "a-fixed to join", || {
            a.cluster.healthy()
        })
        .await;
        if crashed {
            relinked = Instant::now();
        }
        for n in 0..3 {
            let envelope = Envelope::new("watch.x", "r", format!("{round}-{n}")).unwrap();
            a.cluster
                .send_on(lane, b.cluster.node_id(), envelope)
                .unwrap();
        }
        if crashed {
            assert_eq!(
                next().await,
                "broken a-fixed",
                "a crash before: reported first"
            );
            // Broken when the crashed process's link ended, not when its successor linked:
            // a route opened in between never was on the broken link, and stays.
            let at = broke_at.lock().unwrap()[0];
            assert!(at < relinked, "broken as the successor linked, not before");
        }
        for n in 0..3 {
            assert_eq!(
                next().await,
                format!("message {round}-{n}"),
                "round {round}"
            );
        }
        if crash {
            drop(a);
        } else {
            a.shut_down().await;
        }
        crashed = crash;
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), next())
            .await
            .is_err()
            || inbox.try_recv().is_none(),
        "nothing more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_costs_a_bounded_queue_and_its_link_is_given_up() {
    // "stalled" is this test: its heartbeat in Redis advertises a listener that takes the
    // link, reads the greeting, and then reads nothing. The node writing to it fills the
    // socket's buffers, then its bounded queue (sends are refused, not kept), gives the
    // write up after the Redis timeout, reports every route whose envelopes it could not
    // write, and says the link broke.
    let Some((_db, nodes)) = cluster_of(1, |s| s.cluster.max_queued_bytes = 1 << 20).await else {
        return;
    };
    let node = &nodes[0];
    let inbox = node.cluster.inbox("stall").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let key = node.cluster.key(&["node", "stalled"]);
    let heartbeat = format!("up {addr} stalled-secret");
    node.cluster
        .set(&key, &heartbeat, Duration::from_secs(60))
        .await
        .unwrap();
    let (greeted, greeting) = tokio::sync::oneshot::channel();
    let held = tokio::spawn(async move {
        let (mut link, _) = listener.accept().await.unwrap();
        let mut line = [0u8; 128];
        let n = link.read(&mut line).await.unwrap();
        let _ = greeted.send(String::from_utf8_lossy(&line[..n]).into_owned());
        // Holds the link open, reading nothing more, until the test ends.
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(link);
    });
    let stalled = NodeId::parse("stalled").unwrap();
    let body = vec![b'x'; 64 * 1024];
    let mut refused = 0;
    for n in 0..2_000 {
        let envelope = Envelope::new("stall.x", format!("r{n}"), body.clone()).unwrap();
        if node.cluster.send(&stalled, envelope).is_err() {
            refused += 1;
            if refused >= 10 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert!(
        refused >= 10,
        "the queue took 2,000 × 64 KiB for a peer that reads nothing"
    );
    let (mut lost, mut broken) = (0, false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(broken && lost > 0) {
        let item = tokio::time::timeout_at(deadline, inbox.recv())
            .await
            .expect("the stalled link is given up and its routes reported");
        match item {
            Inbound::Lost(Some(routes)) => lost += routes.len(),
            Inbound::Event(hermit_relay::cluster::ClusterEvent::Broken(node, _)) => {
                assert_eq!(node, stalled);
                broken = true;
            }
            _ => {}
        }
    }
    held.abort();
    let greeting = greeting.await.unwrap();
    assert!(
        greeting.starts_with(&format!(
            "HERMIT-LINK/2 {} stalled stalled-secret\n",
            node.cluster.node_id()
        )),
        "the greeting names both nodes and shows the advertised secret: {greeting}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_greet_are_bounded_and_do_not_lock_nodes_out_for_good() {
    // 64 connections may be greeting at once (peers.rs, MAX_GREETING); the 65th is closed
    // at once, not after the greeting timeout. Once the silent ones are dropped (500 ms,
    // the Redis timeout in tests), a node links again.
    let Some((_db, nodes)) = cluster_of(1, |_| {}).await else {
        return;
    };
    let node = &nodes[0];
    let inbox = node.cluster.inbox("probe").unwrap();
    let (addr, secret) = advert(node).await;
    let mut silent = Vec::new();
    for _ in 0..64 {
        silent.push(TcpStream::connect(&addr).await.unwrap());
    }
    // Each is accepted before the next one counts.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut one_more = TcpStream::connect(&addr).await.unwrap();
    assert!(
        closed_within(&mut one_more, Duration::from_millis(300)).await,
        "past 64 greeting at once, a connection is closed at once"
    );
    for link in &mut silent {
        assert!(
            closed_within(link, Duration::from_secs(3)).await,
            "a silent link is dropped after the greeting timeout"
        );
    }
    let mut link = link_to(node, "other-node", &secret).await;
    write_frame(&mut link, "other-node", "probe.x", "r", b"after").await;
    let envelope = next_envelope(&inbox, Duration::from_secs(3))
        .await
        .expect("a node links again once the silent ones are gone");
    assert_eq!(&envelope.body[..], b"after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cuts_a_tunnel_tells_the_other_end() {
    // Mac on A, browser on B (tunnelled to A). A second link "from B" on the tunnel's lane
    // reaches A (this test, with A's secret) while B's own stands: A takes the old one for
    // broken and cuts the tunnels through B, its virtual browser among them. B saw nothing
    // break, and its browser stays quiet, so B writes nothing that would fail: only A's word
    // tells B to cut its browser, rather than leave it paired with no one.
    let Some((_db, nodes)) = cluster_of(2, |_| {}).await else {
        return;
    };
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut mac = a.connect("/mac").await;
    let registered = common::recv(&mut mac).await;
    let code = registered["code"].as_str().unwrap();
    let mut browser = b.connect("/browser").await;
    let join = serde_json::json!({"type": "join", "code": code});
    common::send(&mut browser, join).await;
    assert_eq!(common::recv(&mut browser).await["type"], "joined");
    assert_eq!(common::recv(&mut mac).await["type"], "joined");
    common::exchange(&mut mac, &mut browser, "before", 5).await;

    let (_, secret) = advert(a).await;
    let lanes = lanes_from(a, b);
    assert_eq!(lanes.len(), 1, "one tunnel, one lane");
    let _impostor = link_on(a, b.cluster.node_id().as_str(), &secret, &lanes[0]).await;
    let code = common::expect_closed(&mut browser, Duration::from_secs(5)).await;
    assert_eq!(code, None, "cut, as a lost connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_from_other_nodes_are_bounded_and_a_link_that_ends_makes_room() {
    // At most `cluster.max_links` links from other nodes stand at once (100 here): anyone
    // who read the heartbeat can greet under any node id, on any lane. The 101st is closed
    // once greeted; the standing ones are untouched; one that ends makes room for another.
    let Some((_db, nodes)) = cluster_of(1, |s| s.cluster.max_links = 100).await else {
        return;
    };
    let node = &nodes[0];
    let inbox = node.cluster.inbox("probe").unwrap();
    let (_, secret) = advert(node).await;
    let mut standing = Vec::new();
    for i in 0..100 {
        // Nodes each on lane 0 and lanes 1 to 16: every lane is a link of its own.
        let from = format!("node-{}", i / 17);
        let lane = match i % 17 {
            0 => String::new(),
            lane => lane.to_string(),
        };
        let mut link = link_on(node, &from, &secret, &lane).await;
        // Each carries one frame, read only once the link is counted.
        write_frame(&mut link, &from, "probe.x", "r", b"in").await;
        next_envelope(&inbox, Duration::from_secs(3))
            .await
            .expect("a link within the bound carries its frames");
        standing.push(link);
    }
    let mut one_more = link_to(node, "node-256", &secret).await;
    write_frame(&mut one_more, "node-256", "probe.x", "r", b"past").await;
    assert!(
        closed_within(&mut one_more, Duration::from_secs(2)).await,
        "past 100 standing links, a new one is closed"
    );
    assert!(
        next_envelope(&inbox, Duration::from_millis(300))
            .await
            .is_none(),
        "nothing a refused link wrote is read"
    );
    assert!(
        !closed_within(&mut standing[0], Duration::from_millis(300)).await,
        "the standing links are untouched"
    );

    // One ends (its sender closes it): the next link is taken.
    drop(standing.pop());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut link = link_to(node, "node-257", &secret).await;
        write_frame(&mut link, "node-257", "probe.x", "r", b"room").await;
        if let Some(envelope) = next_envelope(&inbox, Duration::from_millis(500)).await {
            assert_eq!(&envelope.body[..], b"room");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a link that ended makes room for another"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_to_a_slow_reader_arrive_whole_and_in_order() {
    // A node that reads slowly fills the link's buffers: the link's writer waits for room
    // in the middle of frames while senders on two threads keep queueing, and the next
    // writes carry many envelopes at once. Every one arrives whole, once, in the order
    // each thread sent it.
    let Some(redis) = redis_url() else {
        return;
    };
    let Some((_db, nodes)) = cluster_of(1, |_| {}).await else {
        return;
    };
    let node = &nodes[0];
    let mut reader = FakeNode::join(node, &redis, "slow-reader").await;
    let to = NodeId::parse(&reader.id).unwrap();
    let body = |n: usize| format!("{n:06}").repeat(5_000);
    let senders: Vec<_> = (0..2)
        .map(|thread| {
            let (cluster, to) = (std::sync::Arc::clone(&node.cluster), to.clone());
            std::thread::spawn(move || {
                for n in 0..100 {
                    let route = format!("t{thread}");
                    let envelope = Envelope::new("slow.x", route, body(n)).unwrap();
                    cluster.send(&to, envelope).unwrap();
                    if n % 10 == 0 {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            })
        })
        .collect();
    let mut next = [0usize; 2];
    for read in 0..200 {
        if read % 20 == 0 {
            // Slow: the link's buffers fill meanwhile.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let envelope = reader
            .next(Duration::from_secs(10))
            .await
            .expect("every envelope arrives");
        let thread: usize = envelope.route[1..].parse().unwrap();
        assert_eq!(
            envelope.body,
            body(next[thread]).as_bytes(),
            "thread {thread}"
        );
        next[thread] += 1;
    }
    for sender in senders {
        sender.join().unwrap();
    }
    assert_eq!(next, [100, 100]);
}

/// One node whose writes may wait long (Redis timeout 20 s) and queue much (512 MiB), and
/// a peer "stalled" that joined but never reads: the link's greeting and frames sit in the
/// kernel's buffers.
async fn a_node_and_a_stalled_peer() -> Option<(common::TestDb, Vec<TestNode>, FakeNode)> {
    let redis = redis_url()?;
    let (db, nodes) = cluster_of(1, |s| {
        s.cluster.max_queued_bytes = 512 << 20;
        s.cluster.redis_timeout_ms = 20_000;
    })
    .await?;
    let stalled = FakeNode::join(&nodes[0], &redis, "stalled").await;
    Some((db, nodes, stalled))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_for_a_stalled_peer_are_bounded_before_its_write_times_out() {
    // A peer that takes its link and reads nothing: once the socket's buffers are full,
    // its writer waits (up to the Redis timeout, 20 s here) while the outbox, far from its
    // byte bound, keeps handing it one batch per envelope. Past 1,024 waiting batches each
    // new one is dropped at once and its route reported lost — long before the write is
    // given up and the link reported broken — so a stalled peer holds a bounded queue
    // however large `cluster.max_queued_bytes` is.
    let Some((_db, nodes, _stalled)) = a_node_and_a_stalled_peer().await else {
        return;
    };
    let node = &nodes[0];
    let mut inbox = node.cluster.inbox("stall").unwrap();
    let to = NodeId::parse("stalled").unwrap();
    let body = vec![b'x'; 16 * 1024];
    let started = Instant::now();
    let mut first_lost = None;
    for n in 0..20_000 {
        let envelope = Envelope::new("stall.x", format!("r{n}"), body.clone()).unwrap();
        node.cluster
            .send(&to, envelope)
            .expect("the outbox is far from its byte bound");
        // One batch per envelope: the publishing task takes each alone.
        tokio::time::sleep(Duration::from_micros(200)).await;
        match inbox.try_recv() {
            Some(Inbound::Lost(Some(routes))) => {
                first_lost = Some((n, routes));
                break;
            }
            Some(Inbound::Event(hermit_relay::cluster::ClusterEvent::Broken(..))) => {
                panic!("the link was given up before any batch was refused")
            }
            _ => {}
        }
    }
    let (sent, routes) = first_lost.expect("a batch past the bound is dropped and reported");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "dropped while the write still waits ({:?})",
        started.elapsed()
    );
    // What was dropped is what was sent last, not what waits in order before it.
    let dropped = routes
        .iter()
        .map(|route| route[1..].parse::<usize>().unwrap())
        .min()
        .unwrap();
    assert!(
        dropped > 1024,
        "the first {dropped} routes fit in the queue and the socket's buffers"
    );
    assert!(
        sent >= dropped,
        "route r{dropped} reported lost after {sent} sent"
    );
    assert!(
        next_broken(&mut inbox, Duration::from_secs(1))
            .await
            .is_none(),
        "the link stands until its write times out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_goes_on_its_lane_both_ways_and_a_lane_that_breaks_cuts_it() {
    // The test plays a gateway node. A tunnel whose route names lane 2 is answered over a
    // link greeted with lane 2 (written and read on the node's second worker), one whose
    // route names lane 0 over a link without a lane. A lane is greeted like any link; a
    // new link on lane 2 without a goodbye on the old one breaks it: the tunnel is cut,
    // and the gateway told, before anything the new link carries.
    let Some(redis) = redis_url() else {
        return;
    };
    let Some((_db, nodes)) = cluster_of(1, |_| {}).await else {
        return;
    };
    let a = &nodes[0];
    let (_, secret) = advert(a).await;
    let within = Duration::from_secs(3);
    let join = serde_json::json!({"type": "join", "code": "ZZZZZZ"}).to_string();
    let open = serde_json::json!({"ip": "127.0.0.1", "endpoint": "/browser", "first": join});
    let open = open.to_string();

    // A node of the version before lanes is refused (one cluster runs one version).
    let (addr, _) = advert(a).await;
    let mut old = TcpStream::connect(&addr).await.unwrap();
    let to = a.cluster.node_id().as_str();
    let greeting = format!("HERMIT-LINK/1 lane-gateway {to} {secret}\n");
    old.write_all(greeting.as_bytes()).await.unwrap();
    assert!(
        closed_within(&mut old, within).await,
        "version 1 is refused"
    );

    // Lanes it may not name are refused like a wrong secret.
    for lane in ["0", "17", "x", "2 2"] {
        let mut link = link_on(a, "lane-gateway", &secret, lane).await;
        assert!(
            closed_within(&mut link, within).await,
            "lane {lane:?} is refused"
        );
    }

    for (gateway, lane) in [("lane-gateway", 2), ("plain-gateway", 0)] {
        let mut fake = FakeNode::join(a, &redis, gateway).await;
        let named = if lane == 0 {
            String::new()
        } else {
            lane.to_string()
        };
        let mut link = link_on(a, gateway, &secret, &named).await;
        let route = format!("{gateway}/1/1/{lane}");
        write_frame(&mut link, gateway, "tun.open", &route, open.as_bytes()).await;
        let down = fake
            .next(within)
            .await
            .expect("the virtual browser answers");
        assert_eq!(
            (down.kind.as_str(), down.route.as_str()),
            ("tun.down", &*route)
        );
        assert_eq!(fake.lane, Some(lane), "answered on the route's lane");
        let from = NodeId::parse(gateway).unwrap();
        assert!(
            a.cluster.links_from().contains(&(from, lane)),
            "{:?}",
            a.cluster.links_from()
        );
        if lane == 0 {
            continue;
        }
        // The lane's link is replaced without a goodbye: the tunnel is cut at once, and
        // its gateway told on the same lane. A message for it on the new link, right
        // after the greeting, is not taken as part of the tunnel that lost what it had.
        let mut replacing = link_on(a, gateway, &secret, &named).await;
        let late = serde_json::json!({"type": "join", "code": "YYYYYY"}).to_string();
        write_frame(&mut replacing, gateway, "tun.up", &route, late.as_bytes()).await;
        let close = fake.next(within).await.expect("the gateway is told");
        assert_eq!(
            (close.kind.as_str(), close.route.as_str(), &close.body[..]),
            ("tun.close", &*route, &b""[..]),
            "cut, with nothing answered before"
        );
        assert!(
            closed_within(&mut link, within).await,
            "the replaced link is closed"
        );
        assert!(
            fake.next(Duration::from_millis(300)).await.is_none(),
            "nothing after the cut"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_for_a_stalled_peer_on_a_lane_are_bounded_and_reported_lost() {
    // As on lane 0 (above), on lane 1, whose writer runs on the node's first worker and
    // takes each envelope as a batch of its own: past 65,536 waiting, a send is refused at
    // once and its route reported lost, while the write still waits (20 s timeout here).
    let Some((_db, nodes, _stalled)) = a_node_and_a_stalled_peer().await else {
        return;
    };
    let node = &nodes[0];
    let inbox = node.cluster.inbox("stall").unwrap();
    let to = NodeId::parse("stalled").unwrap();
    let body = vec![b'x'; 1024];
    let started = Instant::now();
    let mut refused = None;
    for n in 0..200_000 {
        let envelope = Envelope::new("stall.x", format!("r{n}"), body.clone()).unwrap();
        if node.cluster.send_on(1, &to, envelope).is_err() {
            refused = Some(n);
            break;
        }
        if n % 1000 == 0 {
            // Let the writer run: it fills the socket's buffers, then waits.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let refused = refused.expect("a send past the bound is refused");
    assert!(
        refused > 65_536,
        "the first {refused} fit in the queue and the socket's buffers"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "refused while the write still waits ({:?})",
        started.elapsed()
    );
    let lost = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            if let Inbound::Lost(Some(routes)) = inbox.recv().await {
                return routes;
            }
        }
    })
    .await
    .expect("the refused route is reported lost");
    assert_eq!(lost, vec![format!("r{refused}")]);
}
