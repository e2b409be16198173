//! What stands around the browser in these tests: the web site that serves the test page
//! (its origin is the one the relay sees), and a TCP link that can be reset under a page.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// The test page, served as it is in the repository.
const PAGE: &str = include_str!("page.html");

/// A web server on its own port that answers every GET with the test page, so the page's
/// origin is `http://127.0.0.1:PORT`: another origin than the relay's, as when a web app is
/// deployed apart from its relay. It serves until the test's runtime ends.
pub struct Site {
    pub port: u16,
}

impl Site {
    /// Starts serving.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream));
            }
        });
        Self { port }
    }

    /// The page's origin, as the browser sends it in `Origin`.
    pub fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The page's address.
    pub fn page_url(&self) -> String {
        format!("{}/page.html", self.origin())
    }
}

/// Reads one request head (bounded in size and time) and answers with the page.
async fn serve(mut stream: TcpStream) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        true
    })
    .await;
    if read != Ok(true) {
        return;
    }
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\n\
         cache-control: no-store\r\nconnection: close\r\n\r\n{PAGE}",
        PAGE.len()
    );
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// A TCP forwarder to `127.0.0.1:target` whose connections can all be reset at once: the
/// page's socket dies without a close frame, as when a network drops it.
pub struct Link {
    pub port: u16,
    connections: Arc<Mutex<JoinSet<()>>>,
    reset: watch::Sender<bool>,
}

impl Link {
    /// Starts forwarding.
    pub async fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(Mutex::new(JoinSet::new()));
        let (reset, reset_rx) = watch::channel(false);
        let shared = Arc::clone(&connections);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                    continue;
                };
                let mut reset = reset_rx.clone();
                // A connection made after a reset works, as after a network comes back.
                reset.mark_unchanged();
                shared.lock().unwrap().spawn(forward(client, server, reset));
            }
        });
        Self {
            port,
            connections,
            reset,
        }
    }

    /// Ends every forwarded connection without a close frame, and returns once the far side
    /// (the relay, or nginx) has closed its end too, so the test knows the relay saw it.
    pub async fn reset(&self) {
        self.reset.send_replace(true);
        let mut ended = std::mem::take(&mut *self.connections.lock().unwrap());
        tokio::time::timeout(Duration::from_secs(10), async {
            while ended.join_next().await.is_some() {}
        })
        .await
        .expect("the far side closes a reset connection within 10 s");
        self.reset.send_replace(false);
    }
}

async fn forward(mut client: TcpStream, mut server: TcpStream, mut reset: watch::Receiver<bool>) {
    let was_reset = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
        _ = reset.wait_for(|reset| *reset) => true,
    };
    if !was_reset {
        return;
    }
    drop(client);
    let _ = server.shutdown().await;
    let mut sink = [0u8; 4096];
    while matches!(server.read(&mut sink).await, Ok(n) if n > 0) {}
}
