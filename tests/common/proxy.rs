//! A TCP proxy that can fail the way real networks do: silently. When it is `down`, bytes
//! in both directions vanish — no FIN, no RST, the sockets stay open — as when a laptop
//! lid closes or a NAT forgets a mapping. Connections made while it is down go nowhere
//! either. Connections made after it is `up` again work. In front of several relays it is
//! a round-robin load balancer: each new connection goes to the next one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The proxy; it runs until the test ends.
pub struct Proxy {
    /// Where clients connect.
    pub port: u16,
    /// Bumped by each cut: a connection forwards only while the generation it was born in
    /// is the current one and the link is up.
    state: Arc<State>,
    /// Where new connections go, in turn.
    targets: Arc<std::sync::Mutex<Vec<u16>>>,
}

struct State {
    generation: AtomicU64,
    down: std::sync::atomic::AtomicBool,
}

impl State {
    fn alive(&self, born: u64) -> bool {
        !self.down.load(Ordering::SeqCst) && self.generation.load(Ordering::SeqCst) == born
    }
}

impl Proxy {
    /// Forwards `127.0.0.1:<port>` to `127.0.0.1:<target>`.
    pub async fn start(target: u16) -> Self {
        Self::round_robin(vec![target]).await
    }

    /// Forwards each new connection to the next of `targets` in turn, starting with the
    /// first (as a load balancer without sticky sessions).
    pub async fn round_robin(targets: Vec<u16>) -> Self {
        let targets = Arc::new(std::sync::Mutex::new(targets));
        let shared_targets = Arc::clone(&targets);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State {
            generation: AtomicU64::new(0),
            down: Default::default(),
        });
        let shared = Arc::clone(&state);
        tokio::spawn(async move {
            let mut next = 0;
            while let Ok((client, _)) = listener.accept().await {
                let target = {
                    let targets = shared_targets.lock().unwrap();
                    targets[next % targets.len()]
                };
                next += 1;
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                    continue;
                };
                let born = shared.generation.load(Ordering::SeqCst);
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pump(client_read, server_write, Arc::clone(&shared), born));
                tokio::spawn(pump(server_read, client_write, Arc::clone(&shared), born));
            }
        });
        Self {
            port,
            state,
            targets,
        }
    }

    /// From now on, new connections go to `targets` in turn (as a load balancer whose
    /// pool changed); existing ones stay where they are.
    pub fn set_targets(&self, targets: Vec<u16>) {
        *self.targets.lock().unwrap() = targets;
    }

    /// The link dies silently: every byte sent either way from now on is lost, on every
    /// existing connection and every new one, until [`Self::up`].
    pub fn down(&self) {
        self.state.down.store(true, Ordering::SeqCst);
        self.state.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// New connections work again (the ones that were cut stay dead, as after a real
    /// partition).
    pub fn up(&self) {
        self.state.generation.fetch_add(1, Ordering::SeqCst);
        self.state.down.store(false, Ordering::SeqCst);
    }

    /// After `after`, cuts the link silently for `lasting`, then lets new connections
    /// through again.
    pub async fn cut(&self, after: std::time::Duration, lasting: std::time::Duration) {
        tokio::time::sleep(after).await;
        self.down();
        tokio::time::sleep(lasting).await;
        self.up();
    }
}

/// Copies one direction while the connection is alive; after that, reads and discards
/// (the bytes are lost in the network) without ever closing.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: Arc<State>,
    born: u64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if state.alive(born) && to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    if state.alive(born) {
        let _ = to.shutdown().await;
    } else {
        // A dead link never delivers the close either: hold the other half open.
        std::future::pending::<()>().await;
    }
}
