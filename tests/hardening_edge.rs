//! The network edge under a hostile client (issue 15): rate-limiter tables, the budget for
//! failed joins, oversized and malformed frames, slow bodies, lingering closes, proxies,
//! origins and CORS. Memory bounds read the VmRSS of this process, where the relay runs;
//! nothing here asserts on elapsed time.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use hermit_relay::config::{ForwardedHeader, Settings};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Tests that measure this process's memory run alone (`write`), so no other test's
/// allocations show up in their measurement; every other test holds `read`.
static MEMORY: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

// ---- Item 4: a full rate-limiter table evicts instead of refusing everyone new ----

#[tokio::test]
async fn a_full_rate_limiter_table_still_admits_new_addresses() {
    let _shared = MEMORY.read().await;
    let mut s = settings();
    s.limits.max_tracked_addresses = 2;
    s.limits.join_attempts_per_minute = 5;
    let server = TestServer::start(s);
    // Six addresses each spend an attempt within the minute: far more than are tracked.
    for host in 2..8 {
        let from = format!("127.0.0.{host}");
        let mut ws = connect_from(server.port, "/browser", &from, &[])
            .await
            .unwrap();
        send(&mut ws, json!({"type": "join", "code": "AAAAAA"})).await;
        expect_error(&mut ws, "INVALID_CODE").await;
    }
    let metrics = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let evictions = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hermit_rate_limiter_evictions_total "))
        .expect("the eviction counter is exported");
    assert!(evictions.parse::<u64>().unwrap() >= 4, "{evictions}");
}

// ---- Item 5: a relay-wide budget for failed joins ----

#[tokio::test]
async fn failed_joins_are_bounded_relay_wide_however_many_addresses_guess() {
    let _shared = MEMORY.read().await;
    let mut s = settings();
    s.limits.failed_joins_per_minute = 5;
    let server = TestServer::start(s);
    let (mut invalid, mut limited) = (0, 0);
    for host in 2..12 {
        let from = format!("127.0.0.{host}");
        let mut ws = connect_from(server.port, "/browser", &from, &[])
            .await
            .unwrap();
        for _ in 0..3 {
            send(&mut ws, json!({"type": "join", "code": "AAAAAA"})).await;
            let msg = recv(&mut ws).await;
            match msg["code"].as_str().unwrap() {
                "INVALID_CODE" => invalid += 1,
                "RATE_LIMITED" => limited += 1,
                other => panic!("unexpected {other}"),
            }
        }
    }
    assert_eq!((invalid, limited), (5, 25));

    // While the budget is spent every join is refused, even one with a live code...
    let (_mac, code) = mac(&server).await;
    let mut browser = connect_from(server.port, "/browser", "127.0.0.99", &[])
        .await
        .unwrap();
    send(&mut browser, json!({"type": "join", "code": code})).await;
    let text = expect_error(&mut browser, "RATE_LIMITED").await;
    assert!(text.contains("wrong codes"), "{text}");
}

#[tokio::test]
async fn good_joins_do_not_spend_the_failed_join_budget_and_resumes_ignore_it() {
    let _shared = MEMORY.read().await;
    let mut s = settings();
    s.limits.failed_joins_per_minute = 1;
    s.limits.failed_joins_per_network_per_minute = 1;
    let server = TestServer::start(s);
    for _ in 0..5 {
        pair(&server).await;
    }
    let (_mac, mut browser, session) = pair(&server).await;
    // One wrong code spends the whole budget...
    let mut guesser = server.connect("/browser").await;
    send(&mut guesser, json!({"type": "join", "code": "AAAAAA"})).await;
    expect_error(&mut guesser, "INVALID_CODE").await;
    send(&mut guesser, json!({"type": "join", "code": "AAAAAA"})).await;
    expect_error(&mut guesser, "RATE_LIMITED").await;
    // ...and a paired browser that lost its connection still resumes by its sessionId.
    drop(browser);
    let mut back = server.connect("/browser").await;
    send(&mut back, json!({"type": "resume", "sessionId": session})).await;
    browser = back;
    assert_eq!(recv(&mut browser).await["type"], "joined");
}

#[tokio::test]
async fn a_good_join_whose_browser_leaves_at_once_spends_no_failed_join() {
    let _shared = MEMORY.read().await;
    let mut s = settings();
    s.limits.failed_joins_per_minute = 1;
    s.limits.failed_joins_per_network_per_minute = 1;
    let server = TestServer::start(s);
    let mut macs = Vec::new();
    for _ in 0..10 {
        let mut mac = server.connect("/mac").await;
        let code = recv(&mut mac).await["code"].as_str().unwrap().to_owned();
        // The browser sends a good code and is gone before the answer can reach it.
        let mut browser = server.connect("/browser").await;
        send(&mut browser, json!({"type": "join", "code": code})).await;
        drop(browser);
        assert_eq!(recv(&mut mac).await["type"], "joined");
        macs.push(mac);
    }
    // The budget is whole: a wrong code is told so, not refused.
    let mut guesser = server.connect("/browser").await;
    send(&mut guesser, json!({"type": "join", "code": "AAAAAA"})).await;
    expect_error(&mut guesser, "INVALID_CODE").await;
}

#[tokio::test]
async fn one_network_cannot_spend_the_whole_failed_join_budget() {
    let _shared = MEMORY.read().await;
    let mut s = settings();
    s.limits.failed_joins_per_minute = 100;
    s.limits.failed_joins_per_network_per_minute = 2;
    let server = TestServer::start(s);
    // 127.0.0.2 and 127.0.0.3 are one /24: they share two failures.
    let mut outcomes = Vec::new();
    for from in ["127.0.0.2", "127.0.0.3", "127.0.0.2"] {
        let mut ws = connect_from(server.port, "/browser", from, &[])
            .await
            .unwrap();
        send(&mut ws, json!({"type": "join", "code": "AAAAAA"})).await;
        outcomes.push(recv(&mut ws).await["code"].as_str().unwrap().to_owned());
    }
    assert_eq!(outcomes, ["INVALID_CODE", "INVALID_CODE", "RATE_LIMITED"]);
}

// ---- Items 16, 17: forwarded headers ----

/// The outcome of one `join` from 127.0.0.1 (a trusted proxy) with `headers`.
async fn join_through_proxy(server: &TestServer, headers: &[(&'static str, &str)]) -> String {
    let mut ws = connect_from(server.port, "/browser", "127.0.0.1", headers)
        .await
        .unwrap();
    send(&mut ws, json!({"type": "join", "code": "AAAAAA"})).await;
    recv(&mut ws).await["code"].as_str().unwrap().to_owned()
}

fn one_join_a_minute_behind_a_proxy(header: ForwardedHeader) -> Settings {
    let mut s = settings();
    s.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    s.server.forwarded_header = header;
    s.limits.join_attempts_per_minute = 1;
    s
}

#[tokio::test]
async fn only_the_forwarding_header_the_operator_names_is_believed() {
    let _shared = MEMORY.read().await;
    let server = TestServer::start(one_join_a_minute_behind_a_proxy(ForwardedHeader::Forwarded));
    // The proxy sets only `Forwarded`; the client adds an X-Forwarded-For of its own,
    // different each time, to get a fresh budget. It is one client all the same.
    let first = join_through_proxy(
        &server,
        &[
            ("x-forwarded-for", "192.0.2.1"),
            ("forwarded", "for=198.51.100.7"),
        ],
    )
    .await;
    let second = join_through_proxy(
        &server,
        &[
            ("x-forwarded-for", "192.0.2.2"),
            ("forwarded", "for=198.51.100.7"),
        ],
    )
    .await;
    assert_eq!(
        (first.as_str(), second.as_str()),
        ("INVALID_CODE", "RATE_LIMITED")
    );
    // Another client behind the same proxy has its own budget.
    let other = join_through_proxy(&server, &[("forwarded", "for=198.51.100.8")]).await;
    assert_eq!(other, "INVALID_CODE");
}

#[tokio::test]
async fn a_hop_that_is_not_an_address_stops_the_walk_so_forged_hops_left_of_it_are_not_believed() {
    let _shared = MEMORY.read().await;
    let server = TestServer::start(one_join_a_minute_behind_a_proxy(
        ForwardedHeader::XForwardedFor,
    ));
    // A proxy that did not know its client wrote `unknown`; the client forged the rest.
    let first = join_through_proxy(&server, &[("x-forwarded-for", "192.0.2.1, unknown")]).await;
    let second = join_through_proxy(&server, &[("x-forwarded-for", "192.0.2.2, unknown")]).await;
    assert_eq!(
        (first.as_str(), second.as_str()),
        ("INVALID_CODE", "RATE_LIMITED")
    );
}

#[test]
fn the_production_config_trusts_no_proxy_until_the_operator_names_one() {
    let settings = Settings::load_from(
        Some(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/production.toml"
        ))),
        config::Environment::with_prefix("HERMIT_UNSET_IN_THIS_TEST"),
    )
    .unwrap();
    assert!(settings.server.trusted_proxies.is_empty());
    assert_eq!(
        settings.server.forwarded_header,
        ForwardedHeader::XForwardedFor
    );
}

// ---- Raw sockets: frames and requests no well-behaved client library would send ----

/// A TCP connection from 127.0.0.1 that completed a WebSocket handshake on `path`.
async fn raw_websocket(server: &TestServer, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream
}

/// The header of a client frame: masked, with an all-zero key (so the payload goes as is).
fn frame_header(first: u8, length: u64) -> Vec<u8> {
    let mut header = vec![first];
    match length {
        0..=125 => header.push(0x80 | length as u8),
        126..=0xFFFF => {
            header.push(0x80 | 126);
            header.extend_from_slice(&(length as u16).to_be_bytes());
        }
        _ => {
            header.push(0x80 | 127);
            header.extend_from_slice(&length.to_be_bytes());
        }
    }
    header.extend_from_slice(&[0, 0, 0, 0]);
    header
}

/// Reads server frames until a close frame and returns its code; `Err` if the connection
/// ends (or is reset) first.
async fn read_close_code(stream: &mut (impl AsyncRead + Unpin)) -> std::io::Result<u16> {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let mut head = [0u8; 2];
            stream.read_exact(&mut head).await?;
            let length = match head[1] & 0x7F {
                126 => u64::from(stream.read_u16().await?),
                127 => stream.read_u64().await?,
                short => u64::from(short),
            };
            let mut payload = vec![0u8; length as usize];
            stream.read_exact(&mut payload).await?;
            if head[0] & 0x0F == 0x8 {
                return Ok(u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
    })
    .await
    .expect("a close frame or the end of the connection in time")
}

/// Writes `header`, then `total` zeros; stops at the first error, which it returns with
/// the bytes written so far.
fn keep_writing(
    mut writer: OwnedWriteHalf,
    header: Vec<u8>,
    total: usize,
) -> tokio::task::JoinHandle<(usize, std::io::Result<()>)> {
    tokio::spawn(async move {
        if let Err(err) = writer.write_all(&header).await {
            return (0, Err(err));
        }
        let chunk = vec![0u8; 64 * 1024];
        let mut written = 0;
        while written < total {
            if let Err(err) = writer.write_all(&chunk).await {
                return (written, Err(err));
            }
            written += chunk.len();
        }
        (written, Ok(()))
    })
}

// ---- Items 1 and 20: frames refused at their header; violations answered by close ----

/// Resets this process's peak resident memory (VmHWM) to its current RSS.
fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").expect("Linux 4.0 or later");
}

/// The peak resident memory (VmHWM) since [`reset_peak_rss`], in bytes.
fn peak_rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test]
async fn a_frame_announcing_more_than_the_limit_is_refused_at_its_header_without_buffering_it() {
    let _alone = MEMORY.write().await;
    let server = TestServer::start(settings());
    let (mut reader, writer) = raw_websocket(&server, "/browser").await.into_split();
    let before = rss_bytes();
    reset_peak_rss();
    // A text frame announcing 1 GiB, and 256 MiB of it streamed as fast as the relay reads.
    let writing = keep_writing(writer, frame_header(0x81, 1 << 30), 256 << 20);
    let close = read_close_code(&mut reader).await;
    let (written, _) = writing.await.unwrap();
    // The peak, not the RSS now: a buffer freed when the socket closed would not show.
    let grown = peak_rss_bytes().saturating_sub(before);
    eprintln!(
        "{} MiB streamed at a frame announcing 1 GiB; peak RSS grew {} KiB",
        written >> 20,
        grown >> 10
    );
    assert!(
        grown < 48 << 20,
        "peak RSS grew {} MiB while {} MiB were streamed at one socket",
        grown >> 20,
        written >> 20
    );
    assert_eq!(close.unwrap(), 1009);
}

#[tokio::test]
async fn fragments_adding_up_past_the_limit_are_refused_at_the_header_that_passes_it() {
    let _shared = MEMORY.read().await;
    let mut s = settings();
    s.limits.max_message_bytes = 4096;
    s.limits.max_outbound_bytes = 4096;
    s.pairing.resume_buffer_bytes = 4096;
    let server = TestServer::start(s);
    let mut stream = raw_websocket(&server, "/browser").await;
    // 3000 bytes of a text message, then a continuation announcing 3000 more.
    let mut first = frame_header(0x01, 3000);
    first.extend_from_slice(&[b' '; 3000]);
    stream.write_all(&first).await.unwrap();
    stream.write_all(&frame_header(0x80, 3000)).await.unwrap();
    assert_eq!(read_close_code(&mut stream).await.unwrap(), 1009);
}

#[tokio::test]
async fn protocol_violations_are_answered_with_the_close_code_rfc_6455_gives_them() {
    let _shared = MEMORY.read().await;
    let server = TestServer::start(settings());
    // Invalid UTF-8 in a text frame: 1007.
    let mut stream = raw_websocket(&server, "/browser").await;
    let mut frame = frame_header(0x81, 2);
    frame.extend_from_slice(&[0xFF, 0xFE]);
    stream.write_all(&frame).await.unwrap();
    assert_eq!(read_close_code(&mut stream).await.unwrap(), 1007);

    // A 2^62 length header: 1009, at once.
    let mut stream = raw_websocket(&server, "/browser").await;
    stream
        .write_all(&frame_header(0x81, 1 << 62))
        .await
        .unwrap();
    assert_eq!(read_close_code(&mut stream).await.unwrap(), 1009);

    // Reserved bits set, or an unmasked frame: 1002.
    let mut stream = raw_websocket(&server, "/browser").await;
    stream.write_all(&frame_header(0xC1, 0)).await.unwrap();
    assert_eq!(read_close_code(&mut stream).await.unwrap(), 1002);
    let mut stream = raw_websocket(&server, "/browser").await;
    stream.write_all(&[0x81, 0x01, b'x']).await.unwrap();
    assert_eq!(read_close_code(&mut stream).await.unwrap(), 1002);
}

// ---- Issue 10, bug 7: the lingering close ----
//
// A client (a browser, hyper) that is still writing when the relay answers and closes
// treats a failed write — the reset the kernel sends for unread bytes — as the end of the
// connection, and never looks at the answer. So these clients write everything first, and
// every write must succeed; then the answer must be there to read.

#[tokio::test]
async fn a_413_reaches_a_client_that_is_still_writing_its_body() {
    let _shared = MEMORY.read().await;
    let server = TestServer::start(settings());
    let stream = TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    let (mut reader, writer) = stream.into_split();
    // More than loopback's socket buffers hold, less than the relay lingers for.
    let body = 6 << 20;
    let head = format!(
        "POST /auth/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {body}\r\n\r\n"
    );
    // The relay answers 413 from the head alone, long before the body is written.
    let (written, result) = keep_writing(writer, head.into_bytes(), body).await.unwrap();
    assert!(
        result.is_ok(),
        "the body was cut after {written} bytes: {result:?}"
    );
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), reader.read_to_end(&mut response))
        .await
        .expect("the relay closes in time");
    let text = String::from_utf8_lossy(&response);
    assert!(
        text.starts_with("HTTP/1.1 413"),
        "read {read:?}, got {:?}",
        &text[..text.len().min(200)]
    );
}

#[tokio::test]
async fn a_close_1009_reaches_a_client_still_sending_the_rest_of_its_message() {
    let _shared = MEMORY.read().await;
    let server = TestServer::start(settings());
    let (mut reader, writer) = raw_websocket(&server, "/browser").await.into_split();
    // 6 MiB announced against the 2 MiB limit: refused at the header, 1009 queued at once.
    // More than loopback's socket buffers hold, less than the relay lingers for.
    let message = 6 << 20;
    let writing = keep_writing(writer, frame_header(0x81, message as u64), message);
    let (written, result) = writing.await.unwrap();
    assert!(
        result.is_ok(),
        "the message was cut after {written} bytes: {result:?}"
    );
    assert_eq!(read_close_code(&mut reader).await.unwrap(), 1009);
}

// ---- Item 3: slow request bodies, and HTTP connections per address ----

/// A TCP connection to the relay from source address `from` (any 127.0.0.x).
async fn tcp_from(server: &TestServer, from: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket
        .connect(([127, 0, 0, 1], server.port).into())
        .await
        .unwrap()
}

/// Everything the relay sends on `stream` until it closes it, as text.
async fn read_all(stream: &mut TcpStream) -> String {
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response))
        .await
        .expect("the relay answers and closes in time")
        .unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

/// `GET /health` from `from`, closing after it: the status line.
async fn health_from(server: &TestServer, from: &str) -> String {
    let mut stream = tcp_from(server, from).await;
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    read_all(&mut stream)
        .await
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test]
async fn slow_bodies_time_out_and_one_address_cannot_hold_every_http_connection() {
    let _shared = MEMORY.read().await;
    let mut s = settings();
    s.server.body_timeout_secs = 2;
    s.limits.max_http_connections_per_ip = 4;
    let server = TestServer::start(s);
    // Four logins whose bodies trickle: one byte of a hundred, then nothing.
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut stream = tcp_from(&server, "127.0.0.2").await;
        stream
            .write_all(
                b"POST /auth/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
                  Content-Length: 100\r\nExpect: 100-continue\r\n\r\n{",
            )
            .await
            .unwrap();
        // `100 Continue` proves the relay has this connection (and its head) in hand.
        let mut line = [0u8; 25];
        stream.read_exact(&mut line).await.unwrap();
        assert!(line.starts_with(b"HTTP/1.1 100"), "{line:?}");
        slow.push(stream);
    }
    // That address has its maximum open: a fifth connection is refused at once.
    let mut fifth = tcp_from(&server, "127.0.0.2").await;
    let refused = read_all(&mut fifth).await;
    assert!(refused.starts_with("HTTP/1.1 429"), "{refused}");
    assert!(refused.to_lowercase().contains("retry-after:"), "{refused}");
    // Everyone else is served meanwhile.
    assert_eq!(health_from(&server, "127.0.0.3").await, "HTTP/1.1 200 OK");
    // Each slow body runs out of time: 408, and its connection is closed.
    for mut stream in slow {
        let answer = read_all(&mut stream).await;
        assert!(answer.contains("HTTP/1.1 408"), "{answer}");
    }
    // And the address has its places back.
    let mut status = String::new();
    for _ in 0..100 {
        status = health_from(&server, "127.0.0.2").await;
        if status.starts_with("HTTP/1.1 200") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, "HTTP/1.1 200 OK");
}

#[tokio::test]
async fn a_websocket_stops_counting_against_the_http_cap_once_upgraded() {
    let _shared = MEMORY.read().await;
    let mut s = settings();
    s.limits.max_http_connections_per_ip = 2;
    let server = TestServer::start(s);
    let mut sockets = Vec::new();
    for _ in 0..5 {
        sockets.push(
            connect_from(server.port, "/browser", "127.0.0.2", &[])
                .await
                .expect("a WebSocket is not an HTTP connection"),
        );
    }
    assert_eq!(health_from(&server, "127.0.0.2").await, "HTTP/1.1 200 OK");
}

// ---- Item 19: an origin refusal a page can tell from a network drop ----

#[tokio::test]
async fn a_page_from_an_origin_not_allowed_is_closed_with_1008_and_a_reason() {
    let _shared = MEMORY.read().await;
    let mut s = settings();
    s.server.allowed_origins = vec!["https://app.example.com".into()];
    let server = TestServer::start(s);
    for path in ["/browser", "/ws/client"] {
        let mut ws = connect_from(
            server.port,
            path,
            "127.0.0.1",
            &[("origin", "https://evil.example")],
        )
        .await
        .expect("the upgrade is accepted");
        let frame = tokio::time::timeout(WAIT, async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(frame))) => return frame,
                    Some(Ok(_)) => continue,
                    other => panic!("expected a close frame, got {other:?}"),
                }
            }
        })
        .await
        .expect("closed in time")
        .expect("with a code and reason");
        assert_eq!(u16::from(frame.code), 1008, "{path}");
        assert_eq!(frame.reason.as_str(), "origin not allowed", "{path}");
    }
}

// ---- Item 18: CORS on the HTTP API for server.allowed_origins ----

fn header_of(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn the_http_api_answers_preflights_and_cross_origin_calls_from_allowed_origins() {
    let _shared = MEMORY.read().await;
    let mut s = settings();
    s.server.allowed_origins = vec!["https://app.example.com".into()];
    let server = TestServer::start(s);
    let http = reqwest::Client::new();
    let app = "https://app.example.com";
    for (method, path) in [
        ("POST", "/auth/register"),
        ("POST", "/auth/login"),
        ("POST", "/auth/refresh"),
        ("GET", "/api/machines"),
        ("DELETE", "/api/machines/some-id"),
    ] {
        let preflight = http
            .request(reqwest::Method::OPTIONS, server.url(path))
            .header("origin", app)
            .header("access-control-request-method", method)
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
            .await
            .unwrap();
        assert!(
            preflight.status().is_success(),
            "{path}: {}",
            preflight.status()
        );
        assert_eq!(
            header_of(&preflight, "access-control-allow-origin").as_deref(),
            Some(app)
        );
        let methods = header_of(&preflight, "access-control-allow-methods").unwrap();
        assert!(methods.contains(method), "{path}: {methods}");
        let headers = header_of(&preflight, "access-control-allow-headers")
            .unwrap()
            .to_lowercase();
        assert!(headers.contains("authorization") && headers.contains("content-type"));
    }

    // The real calls carry the header too, errors included, and expose Retry-After.
    let registered = http
        .post(server.url("/auth/register"))
        .header("origin", app)
        .json(&json!({"email": "cors@example.com", "password": "a long enough password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 200);
    assert_eq!(
        header_of(&registered, "access-control-allow-origin").as_deref(),
        Some(app)
    );
    let token = registered.json::<serde_json::Value>().await.unwrap()["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let machines = http
        .get(server.url("/api/machines"))
        .header("origin", app)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(machines.status(), 200);
    assert_eq!(
        header_of(&machines, "access-control-allow-origin").as_deref(),
        Some(app)
    );
    let refused = http
        .get(server.url("/api/machines"))
        .header("origin", app)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(
        header_of(&refused, "access-control-allow-origin").as_deref(),
        Some(app)
    );
    let exposed = header_of(&refused, "access-control-expose-headers")
        .unwrap()
        .to_lowercase();
    assert!(exposed.contains("retry-after"), "{exposed}");
}

#[tokio::test]
async fn other_origins_and_other_routes_get_no_cors_headers() {
    let _shared = MEMORY.read().await;
    let mut s = settings();
    s.server.allowed_origins = vec!["https://app.example.com".into()];
    let server = TestServer::start(s);
    let http = reqwest::Client::new();
    let preflight = http
        .request(reqwest::Method::OPTIONS, server.url("/auth/login"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(header_of(&preflight, "access-control-allow-origin"), None);
    let login = http
        .post(server.url("/auth/login"))
        .header("origin", "https://evil.example")
        .json(&json!({"email": "x@example.com", "password": "whatever12"}))
        .send()
        .await
        .unwrap();
    assert_eq!(header_of(&login, "access-control-allow-origin"), None);
    let health = http
        .get(server.url("/health"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(header_of(&health, "access-control-allow-origin"), None);

    // With no allowed origins, the API takes no cross-origin calls at all.
    let server = TestServer::start(settings());
    let preflight = http
        .request(reqwest::Method::OPTIONS, server.url("/auth/login"))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(header_of(&preflight, "access-control-allow-origin"), None);
}

// ---- Item 20: 429 answers say when to come back ----

#[tokio::test]
async fn a_429_carries_retry_after() {
    let _shared = MEMORY.read().await;
    let mut s = settings();
    s.limits.auth_attempts_per_minute = 1;
    let server = TestServer::start(s);
    let http = reqwest::Client::new();
    let login = || {
        http.post(server.url("/auth/login"))
            .json(&json!({"email": "x@example.com", "password": "whatever12"}))
            .send()
    };
    assert_eq!(login().await.unwrap().status(), 401);
    let limited = login().await.unwrap();
    assert_eq!(limited.status(), 429);
    let retry_after: u64 = header_of(&limited, "retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after));
}

// ---- Item 6: what withdrawn codes cost is bounded ----

/// `rounds` × 1,000 `register`s on `mac`, each answered with a fresh code.
async fn register_flood(mac: &mut Ws, rounds: usize) {
    let register = Message::text(json!({"type": "register", "clientId": "flood"}).to_string());
    for _ in 0..rounds {
        for _ in 0..1000 {
            mac.feed(register.clone()).await.unwrap();
        }
        mac.flush().await.unwrap();
        for _ in 0..1000 {
            let answer = recv(mac).await;
            assert_eq!(answer["type"], "registered", "{answer}");
        }
    }
}

/// Floods every mac at once; gives them back.
async fn flood(macs: Vec<Ws>, rounds: usize) -> Vec<Ws> {
    let floods = macs.into_iter().map(|mut mac| {
        tokio::spawn(async move {
            register_flood(&mut mac, rounds).await;
            mac
        })
    });
    futures_util::future::join_all(floods)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_register_flood_cannot_grow_memory_past_the_retired_code_bound() {
    let _alone = MEMORY.write().await;
    let mut s = settings();
    s.limits.max_pending_codes = 10_000;
    s.limits.join_attempts_per_minute = 10_000_000;
    let server = TestServer::start(s);
    let mut macs = Vec::new();
    for _ in 0..4 {
        macs.push(mac(&server).await.0);
    }
    // 20,000 withdrawn codes: the memory of retired codes (10,000) is full.
    macs = flood(macs, 5).await;
    let saturated = rss_bytes();
    let started = std::time::Instant::now();
    // 80,000 more: remembered codes are replaced, not added. (Unbounded, they would cost
    // about 210 bytes each: 16 MiB.)
    macs = flood(macs, 20).await;
    let grown = rss_bytes().saturating_sub(saturated);
    eprintln!(
        "80,000 registers in {:?}; RSS {} MiB at saturation, grew {} KiB after",
        started.elapsed(),
        saturated >> 20,
        grown >> 10
    );
    assert!(grown < 8 << 20, "RSS grew {} MiB", grown >> 20);
    drop(macs);
}

// ---- The upgrade read before the HTTP layer (issue 13): heads it takes and heads it passes on ----

/// An upgrade request for `/mac`, with `extra` header lines (each ending in CRLF).
fn mac_upgrade(extra: &str) -> String {
    format!(
        "GET /mac HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// `count` client `ping` frames, `ts` 0, 1, 2…
fn pings(count: usize) -> Vec<u8> {
    let mut frames = Vec::new();
    for ts in 0..count {
        let text = json!({"type": "ping", "ts": ts}).to_string();
        frames.extend(frame_header(0x81, text.len() as u64));
        frames.extend_from_slice(text.as_bytes());
    }
    frames
}

/// Writes `request` but its last CRLF, pauses (so the relay has read all of that), then
/// that CRLF and `count` pings in one go (the frames arrive with the end of the head,
/// before the 101); reads the 101's head and returns the `ts` of each `pong` until
/// `count` came.
async fn upgrade_with_early_pings(server: &TestServer, request: &str, count: usize) -> Vec<u64> {
    let mut stream = TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    let (start, end) = request.split_at(request.len() - 2);
    stream.write_all(start.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut bytes = end.as_bytes().to_vec();
    bytes.extend(pings(count));
    stream.write_all(&bytes).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await.unwrap());
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut pongs = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while pongs.len() < count {
            let mut first = [0u8; 2];
            stream.read_exact(&mut first).await.unwrap();
            let length = match first[1] & 0x7F {
                126 => u64::from(stream.read_u16().await.unwrap()),
                127 => stream.read_u64().await.unwrap(),
                short => u64::from(short),
            };
            let mut payload = vec![0u8; length as usize];
            stream.read_exact(&mut payload).await.unwrap();
            assert_eq!(first[0], 0x81, "a text frame, not a close");
            let msg: serde_json::Value = serde_json::from_slice(&payload).unwrap();
            if msg["type"] == "pong" {
                pongs.push(msg["ts"].as_u64().unwrap());
            }
        }
    })
    .await
    .expect("every pong in time");
    pongs
}

#[tokio::test]
async fn frames_sent_with_the_upgrade_head_are_read_after_it_in_order() {
    let _shared = MEMORY.read().await;
    let server = TestServer::start(settings());
    let pongs = upgrade_with_early_pings(&server, &mac_upgrade(""), 300).await;
    assert_eq!(pongs, (0..300).collect::<Vec<u64>>());
}

#[tokio::test]
async fn an_upgrade_the_http_layer_answers_keeps_the_frames_behind_its_head_in_order() {
    // Two keys: not a head taken before the HTTP layer, which answers it (with the first
    // key) from the bytes replayed to it. Head and frames are more than the HTTP layer
    // reads at once, so the frames behind the head are partly in its buffer and partly not
    // yet read by it; they must reach the connection in the order sent.
    let _shared = MEMORY.read().await;
    let server = TestServer::start(settings());
    let extra = format!(
        "Sec-WebSocket-Key: c2Vjb25kIGtleSBoZXJlIQ==\r\nX-Pad: {}\r\n",
        "p".repeat(120_000)
    );
    let pongs = upgrade_with_early_pings(&server, &mac_upgrade(&extra), 800).await;
    assert_eq!(pongs, (0..800).collect::<Vec<u64>>());
}

#[tokio::test]
async fn a_request_target_longer_than_the_http_layer_takes_is_refused_there() {
    let _shared = MEMORY.read().await;
    let server = TestServer::start(settings());
    let mut stream = TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    let request = mac_upgrade("").replacen("/mac", &format!("/mac?{}", "a".repeat(65_535)), 1);
    stream.write_all(request.as_bytes()).await.unwrap();
    let answer = read_all(&mut stream).await;
    assert!(!answer.starts_with("HTTP/1.1 101"), "{answer}");
    assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
}
