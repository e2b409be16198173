//! The relay as a real browser sees it: headless Chromium (Debian's `chromium` and
//! `chromium-driver`) runs `tests/browser/page.html`, served from an origin of its own, and
//! the page talks to the relay with the browser's own WebSocket and `fetch()` — directly,
//! and through nginx running the shipped example config. The other end (a mac, an agent)
//! is the test. What only a browser shows is checked here: close codes and reasons as the
//! page reads them, CORS, and origins.
//!
//! `.ci/run` installs Chromium, chromedriver and nginx; under CI a missing one fails the
//! test, elsewhere the test says so loudly and passes without running.

mod common;

#[path = "browser/chrome.rs"]
mod chrome;
#[path = "browser/page.rs"]
mod page;
#[path = "support/process.rs"]
mod process;
#[path = "browser/site.rs"]
mod site;

use common::nginx::{behind_nginx, nginx_binary, start_nginx, Nginx};
use common::*;
use hermit_relay::config::Settings;
use page::Page;
use site::Site;

/// Where the page's connections go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Straight to the relay.
    Direct,
    /// Through nginx running `config/nginx.conf.example`.
    Nginx,
}

/// Runs each named `async fn(Route)` once per route: `directly::name`, `through_nginx::name`.
macro_rules! directly_and_through_nginx {
    ($($name:ident),* $(,)?) => {
        mod directly {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Route::Direct).await;
                }
            )*
        }
        mod through_nginx {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Route::Nginx).await;
                }
            )*
        }
    };
}

// After the macro, which they use.
#[path = "browser/accounts.rs"]
mod accounts;
#[path = "browser/pairing.rs"]
mod pairing;

/// Everything one test needs: the page's site (serving until the test ends), a relay (with a database of its own) that
/// allows the site's origin, nginx in front of it if the route says so, and the page
/// loaded in a fresh Chromium.
pub struct Stage {
    pub page: Page,
    pub server: TestServer,
    /// The port the page's connections go to: the relay's, or nginx's.
    pub front: u16,
    _nginx: Option<Nginx>,
}

impl Stage {
    /// Sets the stage with test settings that `adjust` may change; `None` when a part is
    /// missing outside CI (said out loud).
    pub async fn start(route: Route, adjust: impl FnOnce(&mut Settings)) -> Option<Self> {
        // Every part is checked before anything starts, so a skip is quick.
        chrome::binaries()?;
        let nginx = match route {
            Route::Nginx => Some(nginx_binary()?),
            Route::Direct => None,
        };
        let site = Site::start().await;
        let mut settings = settings();
        settings.server.allowed_origins = vec![site.origin()];
        if route == Route::Nginx {
            settings = behind_nginx(settings);
        }
        adjust(&mut settings);
        let server = TestServer::start(settings);
        let nginx = nginx.map(|binary| start_nginx(&binary, server.port, "75s"));
        let front = nginx.as_ref().map_or(server.port, |nginx| nginx.port);
        let page = Page::load(&site).await?;
        Some(Self {
            page,
            server,
            front,
            _nginx: nginx,
        })
    }

    /// `ws://127.0.0.1:FRONT{path}`: where the page opens its WebSockets.
    pub fn ws(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.front)
    }

    /// `http://127.0.0.1:FRONT{path}`: where the page sends its API calls.
    pub fn http(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.front)
    }

    /// A mac on `/mac` through the same route as the page, with its code.
    pub async fn mac(&self) -> (Ws, String) {
        let mut mac = connect_from(self.front, "/mac", "127.0.0.1", &[])
            .await
            .expect("the mac connects");
        let registered = recv(&mut mac).await;
        assert_eq!(registered["type"], "registered", "{registered}");
        let code = registered["code"].as_str().unwrap().to_owned();
        (mac, code)
    }

    /// The page's `/browser` socket (opened at `url`) joined with `code`; the mac hears it
    /// too. Returns the socket and the session id.
    pub async fn join(&self, url: &str, mac: &mut Ws, code: &str) -> (u64, String) {
        let browser = self.page.connect(url).await;
        let join = serde_json::json!({"type": "join", "code": code});
        self.page.send(browser, join).await;
        let joined = self.page.recv(browser).await;
        assert_eq!(joined["type"], "joined", "{joined}");
        assert_eq!(recv(mac).await, joined);
        (browser, joined["sessionId"].as_str().unwrap().to_owned())
    }
}
