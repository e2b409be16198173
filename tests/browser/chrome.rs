//! Headless Chromium driven through chromedriver's WebDriver HTTP API (W3C), with the few
//! commands these tests need: open a session, load a page, run a script that returns a
//! promise's value.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

/// How long one script call (one wait of the page) may take before WebDriver gives up;
/// the page's own waits are shorter, so a test normally fails with the page's answer.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(20);

/// Debian's `chromium` and `chromium-driver`, or `None` (outside CI, said out loud) when
/// either is missing. Under CI a missing one fails the test: `.ci/run` installs both.
pub fn binaries() -> Option<(PathBuf, PathBuf)> {
    let chromium = PathBuf::from("/usr/bin/chromium");
    let driver = PathBuf::from("/usr/bin/chromedriver");
    if chromium.exists() && driver.exists() {
        return Some((chromium, driver));
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "chromium and chromium-driver are required under CI (.ci/run installs them)"
    );
    eprintln!("\n*** chromium or chromedriver is not installed: browser test NOT RUN ***\n");
    None
}

/// One chromedriver with one headless Chromium session; both end when dropped.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a port of its choosing and opens a session, or `None` when
    /// the binaries are missing outside CI.
    pub async fn start() -> Option<Self> {
        let (chromium, driver) = binaries()?;
        let profile = tempfile::tempdir().unwrap();
        // A loaded machine can keep chromedriver from announcing itself in time (seen once
        // in CI): a driver that does not is ended and another started, three at most.
        let (child, port) = (1..=3)
            .find_map(|_| {
                let mut child = Command::new(&driver)
                    .arg("--port=0")
                    // Its own process group, so Drop can end Chromium with it even if the
                    // session could not be closed politely.
                    .process_group(0)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("chromedriver starts");
                match announced_port(&mut child) {
                    Some(port) => Some((child, port)),
                    None => {
                        let _ = child.kill();
                        let _ = child.wait();
                        None
                    }
                }
            })
            .expect("chromedriver announces its port (three tries of 20 s)");
        let http = reqwest::Client::builder()
            .timeout(SCRIPT_TIMEOUT + Duration::from_secs(10))
            .build()
            .unwrap();
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "timeouts": {"script": SCRIPT_TIMEOUT.as_millis() as u64, "pageLoad": 10_000},
            "goog:chromeOptions": {
                "binary": chromium,
                // No sandbox: CI runs as root. The rest spares a shared machine the
                // background work of a desktop browser.
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--no-first-run", "--disable-extensions",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--disable-default-apps", "--mute-audio",
                    "--disable-features=Translate,OptimizationHints,MediaRouter",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        }}});
        let mut browser = Self {
            driver: child,
            port,
            session: String::new(),
            http,
            _profile: profile,
        };
        let created = browser.command("POST", "/session", capabilities).await;
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {created}"))
            .to_owned();
        Some(browser)
    }

    /// Loads `url` and waits for it.
    pub async fn goto(&self, url: &str) {
        let path = format!("/session/{}/url", self.session);
        self.command("POST", &path, json!({"url": url})).await;
    }

    /// Calls `hermit[function](...args)` in the page and returns what it returned (the
    /// value a promise resolves to); an exception in the page fails the test.
    pub async fn call(&self, function: &str, args: Value) -> Value {
        let script = "const done = arguments[arguments.length - 1];\
            Promise.resolve().then(() => window.hermit[arguments[0]](...arguments[1]))\
            .then((v) => done({ok: v === undefined ? null : v}), (e) => done({thrown: String(e)}));";
        let path = format!("/session/{}/execute/async", self.session);
        let answer = self
            .command(
                "POST",
                &path,
                json!({"script": script, "args": [function, args]}),
            )
            .await;
        assert!(answer["thrown"].is_null(), "{function} threw: {answer}");
        answer["ok"].clone()
    }

    /// One WebDriver command; its `value`. A WebDriver error fails the test.
    async fn command(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let request = match method {
            "POST" => self.http.post(url).json(&body),
            _ => self.http.get(url),
        };
        let response = request.send().await.expect("chromedriver answers");
        let status = response.status();
        let answer: Value = response.json().await.expect("chromedriver answers JSON");
        assert!(status.is_success(), "WebDriver {path}: {status} {answer}");
        answer["value"].clone()
    }
}

/// Reads chromedriver's "started successfully on port N." line (within 20 s), then keeps
/// draining its standard output on a thread so a chatty driver never blocks on the pipe.
fn announced_port(child: &mut Child) -> Option<u16> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref().map_while(Result::ok) {
            if let Some(rest) = line.split("started successfully on port ").nth(1) {
                let _ = tx.send(rest.trim_end_matches('.').parse::<u16>().ok());
                break;
            }
        }
        for _ in lines {}
    });
    rx.recv_timeout(Duration::from_secs(20)).ok().flatten()
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Close the session so Chromium exits and removes its profile cleanly (Drop cannot
        // await, so a plain blocking request); then end the whole process group.
        if !self.session.is_empty() {
            let _ = delete_session(self.port, &self.session);
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// `DELETE /session/{id}` over a bare socket, bounded by timeouts; returns once it is
/// answered (with how many bytes of the answer were read).
fn delete_session(port: u16, session: &str) -> std::io::Result<usize> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "DELETE /session/{session} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    // chromedriver answers once Chromium has quit, and may keep the connection open after:
    // the first bytes of the answer are all there is to wait for.
    let mut answer = [0u8; 1024];
    stream.read(&mut answer)
}
