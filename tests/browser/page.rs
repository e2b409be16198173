//! The test page as the tests see it: WebSockets and `fetch()` made by the browser itself,
//! read back event by event.

use serde_json::{json, Value};

use super::chrome::Browser;
use super::site::Site;

/// How long the page waits for any one event (shorter than WebDriver's script timeout, so
/// a missing event fails with what the page saw).
const EVENT_WAIT_MS: u64 = 10_000;

/// The test page loaded in a fresh headless Chromium.
pub struct Page {
    browser: Browser,
}

/// How the page saw a WebSocket end (the browser's `CloseEvent`).
#[derive(Debug)]
pub struct Closed {
    pub code: u16,
    pub reason: String,
    /// Whether the closing handshake completed (false for a connection that just dropped,
    /// which the page sees as 1006).
    pub clean: bool,
}

impl Page {
    /// Loads the site's page, or `None` when Chromium is missing outside CI.
    pub async fn load(site: &Site) -> Option<Self> {
        let browser = Browser::start().await?;
        browser.goto(&site.page_url()).await;
        Some(Self { browser })
    }

    /// Opens a WebSocket to `url` and returns its id without waiting for it to open.
    pub async fn open(&self, url: &str) -> u64 {
        self.browser
            .call("open", json!([url]))
            .await
            .as_u64()
            .unwrap()
    }

    /// Opens a WebSocket to `url` and waits until it is open.
    pub async fn connect(&self, url: &str) -> u64 {
        let id = self.open(url).await;
        let event = self.event(id).await;
        assert_eq!(event["kind"], "open", "{url} did not open: {event}");
        id
    }

    /// The next event of socket `id`; fails the test if none comes in time.
    pub async fn event(&self, id: u64) -> Value {
        let event = self.browser.call("next", json!([id, EVENT_WAIT_MS])).await;
        assert_ne!(event["kind"], "timeout", "socket {id}: nothing happened");
        event
    }

    /// The next message of socket `id`, parsed; fails the test on anything else.
    pub async fn recv(&self, id: u64) -> Value {
        let event = self.event(id).await;
        assert_eq!(event["kind"], "message", "socket {id}: {event}");
        serde_json::from_str(event["data"].as_str().unwrap()).unwrap()
    }

    /// The next message of socket `id` of type `kind`, passing over others (a client hears
    /// pushes such as `machine_status` whenever they happen).
    pub async fn recv_type(&self, id: u64, kind: &str) -> Value {
        for _ in 0..100 {
            let message = self.recv(id).await;
            if message["type"] == kind {
                return message;
            }
        }
        panic!("socket {id}: 100 messages and no {kind}");
    }

    /// Sends `message` on socket `id`.
    pub async fn send(&self, id: u64, message: Value) {
        let text = message.to_string();
        self.browser.call("send", json!([id, text])).await;
    }

    /// Sends a `data` message of `size` copies of `unit`, built in the page.
    pub async fn send_repeated(&self, id: u64, unit: &str, size: usize) {
        self.browser
            .call("sendRepeated", json!([id, unit, size]))
            .await;
    }

    /// Closes socket `id` with `code`.
    pub async fn close(&self, id: u64, code: u16) {
        self.browser.call("close", json!([id, code])).await;
    }

    /// Waits for socket `id` to close, passing over messages and error events; returns
    /// the messages passed over too.
    pub async fn closed(&self, id: u64) -> (Closed, Vec<Value>) {
        let mut passed = Vec::new();
        loop {
            let event = self.event(id).await;
            match event["kind"].as_str() {
                Some("close") => {
                    let closed = Closed {
                        code: event["code"].as_u64().unwrap() as u16,
                        reason: event["reason"].as_str().unwrap().to_owned(),
                        clean: event["wasClean"].as_bool().unwrap(),
                    };
                    return (closed, passed);
                }
                Some("message") => {
                    passed.push(serde_json::from_str(event["data"].as_str().unwrap()).unwrap())
                }
                _ => {}
            }
        }
    }

    /// A `fetch()` from the page: `{status, body, text}`, or `{error}` when the browser
    /// blocked it (as it does a cross-origin call the server did not allow).
    pub async fn fetch(&self, method: &str, url: &str, body: Value, token: Option<&str>) -> Value {
        self.browser
            .call("call", json!([method, url, body, token]))
            .await
    }
}
