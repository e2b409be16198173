//! Quick pairing with the page as the browser and the test as the mac: data both ways, the
//! endings a page must tell apart (its mac left, its message was too big, its network
//! dropped, the relay is stopping), and a resume after a reset.

use std::time::Duration;

use serde_json::json;

use super::common::nginx::{nginx_binary, start_nginx};
use super::common::*;
use super::page::Page;
use super::process::Relay;
use super::site::{Link, Site};
use super::{chrome, Route, Stage};

directly_and_through_nginx!(
    quick_pairing_carries_unicode_and_a_mebibyte_both_ways,
    the_page_reads_mac_disconnected_when_its_mac_leaves,
    a_page_resumes_its_pairing_after_its_connection_is_reset,
    sigterm_closes_the_page_s_sockets_with_1001,
);

/// Text that JSON, JavaScript's UTF-16 strings and UTF-8 must all carry unchanged: accents,
/// CJK, an emoji sequence with a joiner (surrogate pairs), a terminal's escape sequences,
/// a right-to-left override, NUL.
const UNICODE: &str = "héllo wörld — 你好 👩‍💻🦀 \u{1b}[1;31mred\u{1b}[0m \u{202e}abc\u{202c} \0 end";

async fn quick_pairing_carries_unicode_and_a_mebibyte_both_ways(route: Route) {
    let Some(stage) = Stage::start(route, |_| {}).await else {
        return;
    };
    let (mut mac, code) = stage.mac().await;
    let (browser, _) = stage.join(&stage.ws("/browser"), &mut mac, &code).await;

    send_data(&mut mac, UNICODE).await;
    let got = stage.page.recv(browser).await;
    assert_eq!(got, json!({"type": "data", "payload": UNICODE}));
    let data = json!({"type": "data", "payload": UNICODE});
    stage.page.send(browser, data).await;
    expect_data(&mut mac, UNICODE).await;

    // A mebibyte each way, in characters of one to four UTF-8 bytes (the last one two
    // UTF-16 units in the page).
    let unit = "aé→🦀";
    let count = 1024 * 1024 / unit.len() + 1;
    let big = unit.repeat(count);
    send_data(&mut mac, &big).await;
    let got = stage.page.recv(browser).await;
    assert!(
        got["payload"] == big.as_str(),
        "the mebibyte changed on its way to the page"
    );
    stage.page.send_repeated(browser, unit, count).await;
    expect_data(&mut mac, &big).await;
}

async fn the_page_reads_mac_disconnected_when_its_mac_leaves(route: Route) {
    let Some(stage) = Stage::start(route, |_| {}).await else {
        return;
    };
    let (mut mac, code) = stage.mac().await;
    let (browser, _) = stage.join(&stage.ws("/browser"), &mut mac, &code).await;
    mac.close(None).await.unwrap();
    let told = stage.page.recv(browser).await;
    assert_eq!(told["type"], "error", "{told}");
    assert_eq!(told["code"], "MAC_DISCONNECTED", "{told}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_limit_closes_the_page_directly_with_1009_not_1006() {
    a_message_over_the_limit_closes_the_page_with_1009_not_1006(Route::Direct).await;
}

/// Through nginx the page read 1006 in about 2 runs of 5 while the relay sent its FIN at
/// once: nginx, seeing the upstream end while the page was still sending, closed the page's
/// connection with bytes unread, and the reset destroyed the close frame. The lingering
/// close now holds the FIN until the page is quiet (`transport::kill`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_limit_closes_the_page_through_nginx_with_1009_not_1006() {
    a_message_over_the_limit_closes_the_page_with_1009_not_1006(Route::Nginx).await;
}

async fn a_message_over_the_limit_closes_the_page_with_1009_not_1006(route: Route) {
    let limit = 64 * 1024;
    let Some(stage) = Stage::start(route, |s| s.limits.max_message_bytes = limit).await else {
        return;
    };
    let (mut mac, code) = stage.mac().await;
    let (browser, _) = stage.join(&stage.ws("/browser"), &mut mac, &code).await;
    stage.page.send_repeated(browser, "x", 2 * limit).await;
    let (closed, before) = stage.page.closed(browser).await;
    // 1006 would be what a page sees when the relay drops the connection without finishing
    // the closing handshake: indistinguishable from a network failure.
    assert_eq!(closed.code, 1009, "{closed:?}");
    assert!(
        closed.clean,
        "the closing handshake did not complete: {closed:?}"
    );
    for message in before {
        assert_eq!(message["code"], "MESSAGE_TOO_LARGE", "{message}");
    }
    let told = recv(&mut mac).await;
    assert_eq!(told["code"], "BROWSER_DISCONNECTED", "{told}");
}

async fn a_page_resumes_its_pairing_after_its_connection_is_reset(route: Route) {
    let Some(stage) = Stage::start(route, |s| s.pairing.resume_grace_secs = 30).await else {
        return;
    };
    let link = Link::start(stage.front).await;
    let url = format!("ws://127.0.0.1:{}/browser", link.port);
    let (mut mac, code) = stage.mac().await;
    let (browser, session) = stage.join(&url, &mut mac, &code).await;

    link.reset().await;
    let (closed, _) = stage.page.closed(browser).await;
    assert_eq!((closed.code, closed.clean), (1006, false), "{closed:?}");
    // The mac is not told: the page may come back.
    expect_silence(&mut mac, Duration::from_millis(500)).await;
    for i in 0..3 {
        send_data(&mut mac, &format!("held {i} {UNICODE}")).await;
    }

    let again = stage.page.connect(&url).await;
    let resume = json!({"type": "resume", "sessionId": session});
    stage.page.send(again, resume).await;
    let joined = stage.page.recv(again).await;
    assert_eq!(joined, json!({"type": "joined", "sessionId": session}));
    assert_eq!(recv(&mut mac).await, joined);
    for i in 0..3 {
        let held = stage.page.recv(again).await;
        assert_eq!(held["payload"], format!("held {i} {UNICODE}"), "{held}");
    }
    let back = json!({"type": "data", "payload": "back"});
    stage.page.send(again, back).await;
    expect_data(&mut mac, "back").await;
}

/// The real binary (a signal needs a process of its own), with nginx in front on that route.
async fn sigterm_closes_the_page_s_sockets_with_1001(route: Route) {
    if chrome::binaries().is_none() {
        return;
    }
    let nginx = match route {
        Route::Nginx => match nginx_binary() {
            Some(binary) => Some(binary),
            None => return,
        },
        Route::Direct => None,
    };
    let site = Site::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = format!(
        "[server]\nshutdown_timeout_secs = 3\nallowed_origins = [\"{}\"]\n",
        site.origin()
    );
    if route == Route::Nginx {
        config.push_str("trusted_proxies = [\"127.0.0.1/32\"]\n");
    }
    let db = format!("sqlite://{}", dir.path().join("relay.db").display());
    let relay = Relay::start(
        dir.path(),
        &config,
        &[("HERMIT__DATABASE__URL", db.as_str())],
    )
    .await;
    let nginx = nginx.map(|binary| start_nginx(&binary, relay.port, "75s"));
    let front = nginx.as_ref().map_or(relay.port, |nginx| nginx.port);
    let Some(page) = Page::load(&site).await else {
        return;
    };
    let mut sockets = Vec::new();
    for path in ["/browser", "/ws/client"] {
        let socket = page.connect(&format!("ws://127.0.0.1:{front}{path}")).await;
        // Live before the signal: a ping is answered.
        page.send(socket, json!({"type": "ping", "ts": 7})).await;
        assert_eq!(page.recv(socket).await, json!({"type": "pong", "ts": 7}));
        sockets.push(socket);
    }

    relay.term();
    for socket in sockets {
        let (closed, _) = page.closed(socket).await;
        assert_eq!((closed.code, closed.clean), (1001, true), "{closed:?}");
    }
}
