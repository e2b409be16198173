//! A real nginx, configured by a shipped file, in front of relays started by a test:
//! `config/nginx.conf.example` before one relay (`tests/nginx.rs`, `tests/browser.rs`), and
//! `deploy/nginx.conf` round robin before three (`tests/cluster_nginx.rs`).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The nginx binary, or `None` (outside CI, said out loud) when it is not installed; under
/// CI a missing nginx fails the test: `.ci/run` installs it.
pub fn nginx_binary() -> Option<PathBuf> {
    let places = ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"];
    super::required_binary("nginx", &places)
}

/// nginx running a shipped config, stopped (its whole process group) when dropped.
pub struct Nginx {
    /// Where clients connect.
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // The whole process group: killing only the master leaves its worker running,
        // orphaned, after the test.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Replaces `from` with `to` in a shipped config, insisting it is there, so a change to
/// the file that these tests no longer exercise fails loudly.
fn substitute(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "the shipped nginx config no longer contains {from:?}"
    );
    text.replace(from, to)
}

/// nginx running the example config on a free port in front of the relay on `relay_port`,
/// with `read_timeout` as its proxy read and send timeouts; waits until it listens.
pub fn start_nginx(binary: &Path, relay_port: u16, read_timeout: &str) -> Nginx {
    let port = super::free_port();
    let site = shipped("config/nginx.conf.example");
    let site = substitute(
        &site,
        "server 127.0.0.1:8080;",
        &format!("server 127.0.0.1:{relay_port};"),
    );
    let site = substitute(&site, "listen 80;", &format!("listen 127.0.0.1:{port};"));
    let site = substitute(
        &site,
        "proxy_read_timeout 75s;",
        &format!("proxy_read_timeout {read_timeout};"),
    );
    let site = substitute(
        &site,
        "proxy_send_timeout 75s;",
        &format!("proxy_send_timeout {read_timeout};"),
    );
    run(binary, port, &site)
}

/// nginx running `deploy/nginx.conf` (the compose file's round robin over `relay-1`,
/// `relay-2` and `relay-3`) on a free port, its three upstream servers being the relays on
/// `relay_ports`; waits until it listens.
pub fn start_round_robin(binary: &Path, relay_ports: [u16; 3]) -> Nginx {
    let port = super::free_port();
    let mut site = shipped("deploy/nginx.conf");
    for (n, relay_port) in relay_ports.into_iter().enumerate() {
        site = substitute(
            &site,
            &format!("server relay-{}:8080;", n + 1),
            &format!("server 127.0.0.1:{relay_port};"),
        );
    }
    let site = substitute(&site, "listen 80;", &format!("listen 127.0.0.1:{port};"));
    run(binary, port, &site)
}

/// A file of the repository, as shipped.
fn shipped(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// nginx serving `site` (http-context directives) on `port`, with its files in a temporary
/// directory; waits until it listens.
fn run(binary: &Path, port: u16, site: &str) -> Nginx {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let conf = format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 512; }}\n\
         http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
         {site}\n}}\n"
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = Command::new(binary)
        .arg("-c")
        .arg(&conf_path)
        .arg("-p")
        .arg(dir.path())
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("nginx starts");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nginx did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Nginx {
        port,
        child,
        _dir: dir,
    }
}

/// `settings` for a relay that believes nginx (on loopback) about client addresses.
pub fn behind_nginx(mut s: hermit_relay::config::Settings) -> hermit_relay::config::Settings {
    s.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    s
}
