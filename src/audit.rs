//! The audit log: one structured event per security-relevant action — who registered,
//! signed in or was refused, which machines and users changed, which agents and clients
//! came and went, which pairings were made, which limits tripped.
//!
//! An event holds only a name, ids, an email, a client address and fixed reason words:
//! its builder has no field that could take a password, a token or a payload, and a
//! pairing is named by a fingerprint of its id (the id itself is a resume secret).
//!
//! `audit.target = "log"` makes each event a `tracing` event with target `audit`;
//! `"file"` appends it to `audit.file` as one JSON object a line. The file is written by a
//! thread of its own through a bounded queue, so no actor or request ever waits on the
//! disk; it is reopened by [`configure`] (on every reload, so logrotate can move it). The
//! sink is process-wide: one relay (or one admin command) per process.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::config::{AuditSettings, AuditTarget};
use crate::ids::ConnId;
use crate::metrics::METRICS;

/// Events queued for the file at most; past this they are counted and lost rather than
/// let a slow disk grow memory.
const QUEUE: usize = 8192;
/// How long [`flush`] waits for the file to catch up.
const FLUSH_WAIT: Duration = Duration::from_secs(5);

static SINK: LazyLock<ArcSwap<Sink>> = LazyLock::new(|| ArcSwap::from_pointee(Sink::Log));

enum Sink {
    Log,
    File {
        path: PathBuf,
        queue: SyncSender<Job>,
    },
}

enum Job {
    Line(String),
    Reopen,
    Flush(mpsc::Sender<()>),
}

/// One audit event, built field by field and recorded with [`Event::record`].
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Set when the event is written to the file; the log has its own timestamp, so a
    /// pairing's events do not format one they never show.
    time: String,
    event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    machine: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pairing: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    conn: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    by: Option<&'static str>,
}

/// Starts an event named `name` (a fixed word such as `login_refused`).
pub fn event(name: &'static str) -> Event {
    Event {
        time: String::new(),
        event: name,
        user: None,
        email: None,
        machine: None,
        session: None,
        pairing: None,
        client: None,
        conn: None,
        reason: None,
        by: None,
    }
}

impl Event {
    /// The user's id.
    pub fn user(mut self, id: &str) -> Self {
        self.user = Some(id.to_owned());
        self
    }
    /// The email an account has or was tried with.
    pub fn email(mut self, email: &str) -> Self {
        self.email = Some(email.to_owned());
        self
    }
    /// The machine's id.
    pub fn machine(mut self, id: &str) -> Self {
        self.machine = Some(id.to_owned());
        self
    }
    /// A terminal session's id (chosen by its agent; not a secret).
    pub fn session(mut self, id: &str) -> Self {
        self.session = Some(id.to_owned());
        self
    }
    /// A quick pairing, by the fingerprint of its id (never the id: it resumes the pairing).
    pub fn pairing(mut self, fingerprint: String) -> Self {
        self.pairing = Some(fingerprint);
        self
    }
    /// The client's address (through trusted proxies).
    pub fn client(mut self, ip: IpAddr) -> Self {
        self.client = Some(ip);
        self
    }
    /// The WebSocket connection, as numbered in the log's `connection opened` lines.
    pub fn conn(mut self, conn: ConnId) -> Self {
        self.conn = Some(conn.get());
        self
    }
    /// Why, in a fixed word.
    pub fn reason(mut self, reason: &'static str) -> Self {
        self.reason = Some(reason);
        self
    }
    /// Who acted when it was not the user: `cli` for the admin commands.
    pub fn by(mut self, by: &'static str) -> Self {
        self.by = Some(by);
        self
    }

    /// The event as one line of the audit file: stamped with the time now.
    fn line(mut self) -> String {
        self.time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        // unwrap: the event is strings, numbers and an address.
        serde_json::to_string(&self).unwrap()
    }

    /// Writes the event to the configured sink.
    pub fn record(self) {
        match &**SINK.load() {
            Sink::Log => tracing::info!(
                target: "audit",
                event = self.event,
                user = self.user.as_deref(),
                email = self.email.as_deref(),
                machine = self.machine.as_deref(),
                session = self.session.as_deref(),
                pairing = self.pairing.as_deref(),
                client = self.client.map(tracing::field::display),
                conn = self.conn,
                reason = self.reason,
                by = self.by,
                "audit"
            ),
            Sink::File { queue, .. } => {
                let line = self.line();
                if let Err(TrySendError::Full(_)) = queue.try_send(Job::Line(line)) {
                    METRICS.audit_dropped.fetch_add(1, Relaxed);
                }
            }
        }
    }
}

/// Points the audit log at `settings`' target. For a file: opened (created 0640 if absent)
/// before anything changes, so a file that cannot be opened leaves the old sink in place;
/// the same file again is reopened, which is how logrotate's move is followed.
pub fn configure(settings: &AuditSettings) -> std::io::Result<()> {
    let sink = match settings.target {
        AuditTarget::Log => Sink::Log,
        AuditTarget::File => {
            if let Sink::File { path, queue } = &**SINK.load() {
                if *path == settings.file {
                    let _ = queue.send(Job::Reopen);
                    return Ok(());
                }
            }
            let file = open(&settings.file)?;
            let (queue, jobs) = mpsc::sync_channel(QUEUE);
            let path = settings.file.clone();
            std::thread::Builder::new()
                .name("audit-writer".into())
                .spawn(move || write(path, file, jobs))?;
            Sink::File {
                path: settings.file.clone(),
                queue,
            }
        }
    };
    let old = SINK.swap(Arc::new(sink));
    flush_sink(&old);
    Ok(())
}

/// Waits until every event recorded so far is in the file (admin commands call it before
/// they exit; the relay at shutdown).
pub fn flush() {
    flush_sink(&SINK.load());
}

fn flush_sink(sink: &Sink) {
    if let Sink::File { queue, .. } = sink {
        let (done, wait) = mpsc::channel();
        if queue.send(Job::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(FLUSH_WAIT);
        }
    }
}

fn open(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o640);
    options.open(path)
}

/// The writer thread: one `write` per event (appended whole, so lines from the relay and
/// an admin command never interleave), until the sink is replaced and its queue drained.
fn write(path: PathBuf, mut file: File, jobs: Receiver<Job>) {
    for job in jobs {
        match job {
            Job::Line(mut line) => {
                line.push('\n');
                if let Err(err) = file.write_all(line.as_bytes()) {
                    tracing::error!(path = %path.display(), %err, "cannot write the audit log");
                }
            }
            Job::Reopen => match open(&path) {
                Ok(reopened) => file = reopened,
                Err(err) => {
                    tracing::error!(path = %path.display(), %err, "cannot reopen the audit log; still writing to the old file")
                }
            },
            Job::Flush(done) => {
                let _ = file.flush();
                let _ = done.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_serialises_only_what_it_was_given() {
        let line = event("login_refused")
            .email("ada@example.com")
            .client("192.0.2.1".parse().unwrap())
            .reason("invalid_credentials")
            .line();
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["event"], "login_refused");
        assert_eq!(value["client"], "192.0.2.1");
        assert!(value.get("user").is_none());
        assert!(value["time"].as_str().unwrap().ends_with('Z'));
    }
}
