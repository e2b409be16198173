//! The client side of the pairing protocol, shared by every scenario: where to connect
//! ([`Ends`]), connect from a spread of source addresses, pair a mac with a browser, send
//! and echo `data`.

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::target::Target;

/// A client WebSocket.
pub type Ws = WebSocketStream<TcpStream>;

/// Source addresses the load is spread over (127.0.0.2 …), so no one address runs out of
/// ephemeral ports.
const SOURCES: u32 = 50;

/// Opens `path` on the server at `port`, from source address number `n` (mod 50).
pub async fn connect(port: u16, path: &str, n: u32) -> anyhow::Result<Ws> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::from((
        [127, 0, 0, 2 + (n % SOURCES) as u8],
        0,
    )))?;
    let stream = socket.connect(([127, 0, 0, 1], port).into()).await?;
    stream.set_nodelay(true)?;
    let url = format!("ws://127.0.0.1:{port}{path}");
    let (ws, _) = tokio_tungstenite::client_async(url, stream).await?;
    Ok(ws)
}

/// The next JSON text message (control frames skipped).
pub async fn next_json<S>(ws: &mut S) -> anyhow::Result<Value>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text)?),
            Some(Ok(_)) => continue,
            Some(Err(err)) => return Err(err.into()),
            None => anyhow::bail!("closed"),
        }
    }
}

/// Where a scenario's macs and browsers connect, and whose CPU its cost counts.
pub struct Ends {
    /// The port macs connect to.
    pub mac: u16,
    /// The port browsers connect to (another node's, in a cluster).
    pub browser: u16,
    /// The processes whose CPU time is the server's cost, in the order `Cost::servers`
    /// reports them.
    pub pids: Vec<u32>,
}

impl Ends {
    /// Both sides on one server, whose process alone is counted.
    pub fn single(target: &Target) -> Self {
        Self {
            mac: target.port,
            browser: target.port,
            pids: vec![target.pid()],
        }
    }
}

/// A paired mac and browser, from source addresses `n` and `n + 1`.
pub async fn pair(port: u16, n: u32) -> anyhow::Result<(Ws, Ws)> {
    pair_across(port, port, n).await
}

/// A mac on the server at `mac_port` paired with a browser on the one at `browser_port`
/// (another node of a cluster, or the same server), from source addresses `n` and `n + 1`.
pub async fn pair_across(mac_port: u16, browser_port: u16, n: u32) -> anyhow::Result<(Ws, Ws)> {
    let mut mac = connect(mac_port, "/mac", n).await?;
    let registered = next_json(&mut mac).await?;
    let code = registered["code"].as_str().unwrap_or_default().to_owned();
    let mut browser = connect(browser_port, "/browser", n + 1).await?;
    browser
        .send(Message::text(
            json!({"type": "join", "code": code}).to_string(),
        ))
        .await?;
    anyhow::ensure!(
        next_json(&mut browser).await?["type"] == "joined",
        "join failed"
    );
    anyhow::ensure!(
        next_json(&mut mac).await?["type"] == "joined",
        "mac not told"
    );
    Ok((mac, browser))
}

/// A `data` message carrying `payload`.
pub fn data(payload: &str) -> Message {
    Message::text(json!({"type": "data", "payload": payload}).to_string())
}

/// The browser side of an echo: every `data` goes back to the mac.
pub fn echo(browser: Ws) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (mut tx, mut rx) = browser.split();
        while let Ok(msg) = next_json(&mut rx).await {
            if let Some(payload) = msg["payload"].as_str() {
                if tx.send(data(payload)).await.is_err() {
                    break;
                }
            }
        }
    })
}

/// Closes `ws` with a close frame and reads until the server's answering close frame (or
/// the end), so the server has handled the close before the caller goes on. It does not
/// wait for the server to end the TCP connection: the baseline keeps it open while anything
/// still holds the connection's writer.
pub async fn close(mut ws: Ws) {
    let _ = ws.close(None).await;
    while let Some(Ok(msg)) = ws.next().await {
        if msg.is_close() {
            break;
        }
    }
}
