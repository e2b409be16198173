//! The link protocol between nodes (`src/cluster/link.rs`) spoken by a test over real
//! sockets: linking to a node as another node would, and [`FakeNode`], a node the test
//! plays — advertised in the cluster's Redis, linked to by the real nodes.

use std::time::Duration;

use hermit_relay::cluster::{Envelope, Inbound, Inbox};
use hermit_relay::ids::NodeId;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use super::cluster::TestNode;

/// What `node`'s heartbeat in Redis advertises: its link address and secret.
pub async fn advert(node: &TestNode) -> (String, String) {
    let key = node.cluster.key(&["node", node.cluster.node_id().as_str()]);
    let heartbeat = node.cluster.get(&key).await.unwrap().expect("a heartbeat");
    let words: Vec<&str> = heartbeat.split(' ').collect();
    assert_eq!(words.len(), 3, "up <address> <secret>: {heartbeat}");
    assert_eq!(words[0], "up");
    (words[1].to_owned(), words[2].to_owned())
}

/// The lanes other than 0 on which `from` links to `node` now (`from`'s tunnels take
/// them: see `src/workers.rs`).
pub fn lanes_from(node: &TestNode, from: &TestNode) -> Vec<String> {
    node.cluster
        .links_from()
        .into_iter()
        .filter(|(other, lane)| other == from.cluster.node_id() && *lane > 0)
        .map(|(_, lane)| lane.to_string())
        .collect()
}

/// A link to `node`, greeted as node `from` with `secret`.
pub async fn link_to(node: &TestNode, from: &str, secret: &str) -> TcpStream {
    link_on(node, from, secret, "").await
}

/// A link to `node` on `lane` (as the greeting's last word: `""` names none, lane 0),
/// greeted as node `from` with `secret`.
pub async fn link_on(node: &TestNode, from: &str, secret: &str, lane: &str) -> TcpStream {
    let (addr, _) = advert(node).await;
    let mut link = TcpStream::connect(&addr)
        .await
        .expect("the link port answers");
    let to = node.cluster.node_id().as_str();
    let greeting = match lane {
        "" => format!("HERMIT-LINK/2 {from} {to} {secret}\n"),
        lane => format!("HERMIT-LINK/2 {from} {to} {secret} {lane}\n"),
    };
    link.write_all(greeting.as_bytes()).await.unwrap();
    link
}

/// One frame: the length, then the envelope `kind` / `route` / `body` from `from`.
pub fn frame(from: &str, kind: &str, route: &str, body: &[u8]) -> Vec<u8> {
    let mut envelope = Envelope::new(kind, route, body.to_vec()).unwrap();
    envelope.from = NodeId::parse(from).unwrap();
    let wire = envelope.encode();
    let mut out = (wire.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&wire);
    out
}

/// Writes one [`frame`] on `link`.
pub async fn write_frame(link: &mut TcpStream, from: &str, kind: &str, route: &str, body: &[u8]) {
    link.write_all(&frame(from, kind, route, body))
        .await
        .unwrap();
}

/// Whether the node closed `link` within `within` (reading what it sends, which is
/// nothing: a link carries one direction).
pub async fn closed_within(link: &mut TcpStream, within: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(within, link.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// The next envelope in `inbox` within `within`, skipping events.
pub async fn next_envelope(inbox: &Inbox, within: Duration) -> Option<Envelope> {
    tokio::time::timeout(within, async {
        loop {
            if let Inbound::Message(envelope) = inbox.recv().await {
                return envelope;
            }
        }
    })
    .await
    .ok()
}

/// A node of the cluster played by the test: its heartbeat (lasting a minute) and
/// membership are in Redis, so the real nodes take it for alive and link to its listener
/// to send it envelopes; the test reads them with [`FakeNode::next`].
pub struct FakeNode {
    /// Its node id.
    pub id: String,
    /// The lane its link was greeted with (0: none named), once a node linked to it.
    pub lane: Option<usize>,
    listener: TcpListener,
    link: Option<BufReader<TcpStream>>,
}

impl FakeNode {
    /// Advertises node `id` in the cluster `node` belongs to (whose Redis is `redis`), and
    /// waits until `node` takes it for alive.
    pub async fn join(node: &TestNode, redis: &str, id: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heartbeat = format!("up {addr} secret-of-{id}");
        let key = node.cluster.key(&["node", id]);
        node.cluster
            .set(&key, &heartbeat, Duration::from_secs(60))
            .await
            .unwrap();
        redis_command(redis, &["SADD", &node.cluster.key(&["nodes"]), id]).await;
        super::cluster::eventually(Duration::from_secs(8), "the node to see it alive", || {
            node.cluster
                .nodes()
                .iter()
                .any(|known| known.as_str() == id)
        })
        .await;
        Self {
            id: id.to_owned(),
            lane: None,
            listener,
            link: None,
        }
    }

    /// The next envelope a node sends this one within `within`: the first time, the link
    /// is accepted and its greeting checked. (A timeout in the middle of a frame leaves the
    /// link out of step: call it again only after a timeout with nothing sent.)
    pub async fn next(&mut self, within: Duration) -> Option<Envelope> {
        tokio::time::timeout(within, async {
            if self.link.is_none() {
                let (stream, _) = self.listener.accept().await.unwrap();
                let mut link = BufReader::new(stream);
                let mut greeting = String::new();
                link.read_line(&mut greeting).await.unwrap();
                let words: Vec<&str> = greeting.trim_end().split(' ').collect();
                assert_eq!(words[0], "HERMIT-LINK/2", "{greeting}");
                assert_eq!(words[2], self.id, "{greeting}");
                assert_eq!(words[3], format!("secret-of-{}", self.id), "{greeting}");
                assert!(words.len() <= 5, "{greeting}");
                self.lane = Some(words.get(4).map_or(0, |lane| lane.parse().unwrap()));
                self.link = Some(link);
            }
            let link = self.link.as_mut().unwrap();
            let len = link.read_u32().await.unwrap() as usize;
            assert!(len > 0, "a goodbye, not an envelope");
            let mut wire = vec![0u8; len];
            link.read_exact(&mut wire).await.unwrap();
            Envelope::decode(wire.into()).expect("an envelope")
        })
        .await
        .ok()
    }
}

/// Runs one Redis command at `redis` (`redis://host:port`, no password or database
/// number: as `TEST_REDIS_URL` is) and returns its reply line, within 5 s.
async fn redis_command(redis: &str, words: &[&str]) -> String {
    tokio::time::timeout(Duration::from_secs(5), redis_command_now(redis, words))
        .await
        .expect("Redis answers within 5 s")
}

async fn redis_command_now(redis: &str, words: &[&str]) -> String {
    let addr = redis
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_owned();
    assert!(
        !addr.contains('@') && !addr.contains('/'),
        "a plain redis://host:port: {redis}"
    );
    let mut conn = BufReader::new(TcpStream::connect(addr).await.unwrap());
    let mut command = format!("*{}\r\n", words.len());
    for word in words {
        command.push_str(&format!("${}\r\n{word}\r\n", word.len()));
    }
    conn.get_mut().write_all(command.as_bytes()).await.unwrap();
    let mut reply = String::new();
    conn.read_line(&mut reply).await.unwrap();
    assert!(!reply.starts_with('-'), "Redis refused {words:?}: {reply}");
    reply
}
