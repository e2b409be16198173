//! A real nginx, configured by the shipped `config/nginx.conf.example`, in front of a relay
//! started by a test (`tests/nginx.rs`, `tests/browser.rs`).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The nginx binary, or `None` (outside CI, said out loud) when it is not installed; under
/// CI a missing nginx fails the test: `.ci/run` installs it.
pub fn nginx_binary() -> Option<PathBuf> {
    let found = ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "nginx is required under CI (.ci/run installs it)"
        );
        eprintln!("nginx is not installed: nginx tests not run");
    }
    found
}

/// nginx running the example config in front of a relay on `relay_port`.
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

/// Replaces `from` with `to` in the example, insisting it is there, so a change to the
/// example that these tests no longer exercise fails loudly.
fn substitute(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "nginx.conf.example no longer contains {from:?}"
    );
    text.replace(from, to)
}

/// nginx running the example config on a free port in front of the relay on `relay_port`,
/// with `read_timeout` as its proxy read and send timeouts; waits until it listens.
pub fn start_nginx(binary: &Path, relay_port: u16, read_timeout: &str) -> Nginx {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/nginx.conf.example"
    ))
    .unwrap();
    let site = substitute(
        &example,
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
