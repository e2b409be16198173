//! A TCP proxy between the relay and PostgreSQL that can break the link the ways networks
//! do: *cut* (every connection reset, new ones reset as they arrive — a database that went
//! away), *blackhole* (connections accepted and held, nothing forwarded — a partition), and
//! *restore*. Connections held through a blackhole are reset on restore, as the kernel
//! would after `tcp_user_timeout` in a real partition.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward both ways.
    Forward,
    /// Reset every connection, and each new one at once.
    Cut,
    /// Accept and hold connections; forward nothing.
    Blackhole,
}

/// The proxy, listening on `127.0.0.1:port` until dropped.
pub struct Proxy {
    /// Where the relay should connect.
    pub port: u16,
    mode: watch::Sender<Mode>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (mode, watch) = watch::channel(Mode::Forward);
        let accept = tokio::spawn(async move {
            let mut watch = watch;
            while let Ok((client, _)) = listener.accept().await {
                let _ = client.set_zero_linger();
                // Marked seen, so the connection's own copy waits for the *next* change.
                let current = *watch.borrow_and_update();
                match current {
                    // Dropped with zero linger: the client gets a reset.
                    Mode::Cut => drop(client),
                    Mode::Blackhole => {
                        tokio::spawn(hold(client, watch.clone()));
                    }
                    Mode::Forward => {
                        tokio::spawn(forward(client, upstream, watch.clone()));
                    }
                }
            }
        });
        Self { port, mode, accept }
    }

    /// Forwards again; connections held by a blackhole are reset.
    pub fn restore(&self) {
        self.mode.send_replace(Mode::Forward);
    }

    /// Breaks the link the way `mode` says.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        // Every connection task ends when the sender is gone (see `changed()` below).
    }
}

/// Holds a connection accepted during a blackhole until the mode changes, then resets it.
async fn hold(_client: TcpStream, mut watch: watch::Receiver<Mode>) {
    let _ = watch.changed().await;
}

/// Forwards until the link is cut (or restored after a blackhole), then resets both sides.
async fn forward(client: TcpStream, upstream: SocketAddr, mut watch: watch::Receiver<Mode>) {
    let Ok(Ok(server)) =
        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(upstream)).await
    else {
        return;
    };
    let _ = server.set_zero_linger();
    let _ = server.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let (mut up, mut down) = (vec![0u8; 16384], vec![0u8; 16384]);
    let mut forwarding = true;
    loop {
        tokio::select! {
            changed = watch.changed() => {
                if changed.is_err() {
                    return;
                }
                let mode = *watch.borrow();
                match mode {
                    Mode::Cut => return,
                    Mode::Blackhole => forwarding = false,
                    Mode::Forward if !forwarding => return,
                    Mode::Forward => {}
                }
            }
            read = client_read.read(&mut up), if forwarding => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => if server_write.write_all(&up[..n]).await.is_err() { return },
            },
            read = server_read.read(&mut down), if forwarding => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => if client_write.write_all(&down[..n]).await.is_err() { return },
            },
        }
    }
}

/// `url` with its `host:port` replaced by the proxy's.
pub fn through(url: &str, port: u16) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let user = authority
        .rsplit_once('@')
        .map_or(String::new(), |(user, _)| format!("{user}@"));
    format!("{scheme}://{user}127.0.0.1:{port}{path}")
}

/// `host:port` of a PostgreSQL URL on this machine, as a socket address.
pub fn upstream_of(url: &str) -> SocketAddr {
    let rest = url.split_once("://").unwrap().1;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host_port = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5432")
    };
    let host_port = host_port.replace("localhost", "127.0.0.1");
    host_port
        .parse()
        .expect("TEST_POSTGRES_URL names an IP address and port")
}
