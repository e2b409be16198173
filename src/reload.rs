//! Reloading the configuration of a running relay (on `SIGHUP`).
//!
//! The file and the environment are read again and checked exactly as at start; a file
//! that does not load changes nothing, and the reason is logged. Of the keys that changed,
//! those in [`keys::LIVE`] take effect at once: the new settings are swapped into the
//! [`Live`] handle every part of the relay reads from (new connections, requests and
//! attempts see them; open connections keep the settings they started with), and the few
//! components that hold a value of their own are told (rate limiters, the per-address
//! connection limit, trusted proxies, the logger, the audit sink). Every other changed key
//! is logged as "needs a restart" and keeps its running value. The audit file is reopened
//! on every reload, so logrotate can move it.

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::audit;
use crate::config::{keys, Live, Settings};
use crate::connections::Connections;
use crate::limits::Limiters;
use crate::logging::LogHandle;
use crate::metrics::METRICS;
use crate::proxy::ClientAddr;

/// What a reload did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Keys whose new value is in effect.
    pub applied: Vec<String>,
    /// Keys that changed but keep their running value until a restart.
    pub needs_restart: Vec<String>,
}

/// Re-reads the configuration and applies it to the running relay. Cheap to clone.
#[derive(Clone)]
pub struct Reloader {
    file: Option<PathBuf>,
    live: Live,
    limiters: Arc<Limiters>,
    connections: Arc<Connections>,
    client_addr: ClientAddr,
    log: Option<LogHandle>,
}

impl Reloader {
    /// A reloader for the relay whose parts these are.
    pub fn new(
        live: Live,
        limiters: Arc<Limiters>,
        connections: Arc<Connections>,
        client_addr: ClientAddr,
    ) -> Self {
        Self {
            file: None,
            live,
            limiters,
            connections,
            client_addr,
            log: None,
        }
    }

    /// Reads `file` (as `--config` named it) on reload.
    pub fn with_file(mut self, file: Option<PathBuf>) -> Self {
        self.file = file;
        self
    }

    /// Applies `log.level` and `log.format` to this logger on reload.
    pub fn with_log(mut self, log: Option<LogHandle>) -> Self {
        self.log = log;
        self
    }

    /// Reloads and logs what happened, in one line per outcome.
    pub fn reload_and_log(&self) {
        match self.reload() {
            Ok(done) => {
                for key in &done.needs_restart {
                    tracing::warn!(
                        key = key.as_str(),
                        "configuration reload: `{key}` changed but needs a restart; keeping the running value"
                    );
                }
                tracing::info!(
                    applied = done.applied.join(", "),
                    needs_restart = done.needs_restart.join(", "),
                    "configuration reloaded"
                );
            }
            Err(err) => tracing::error!(
                error = err.as_str(),
                "configuration reload failed; nothing changed"
            ),
        }
    }

    /// Reloads: `Err` (with the reason) leaves everything as it was.
    pub fn reload(&self) -> Result<Reloaded, String> {
        let result = self.try_reload();
        match &result {
            Ok(_) => METRICS.reloads.fetch_add(1, Relaxed),
            Err(_) => METRICS.reload_failures.fetch_add(1, Relaxed),
        };
        result
    }

    fn try_reload(&self) -> Result<Reloaded, String> {
        let loaded = Settings::load(self.file.as_deref()).map_err(|err| err.to_string())?;
        let current = self.live.snapshot();
        let (applied, needs_restart): (Vec<String>, Vec<String>) = keys::changed(&current, &loaded)
            .into_iter()
            .partition(|key| keys::is_live(key));
        let merged = keep(&loaded, &current, &needs_restart)?;
        merged.validate().map_err(|refusal| {
            format!(
                "`{}` {} (with the running values of the keys that need a restart)",
                refusal.key, refusal.problem
            )
        })?;
        // The one step that can fail on the outside world goes first: if the new audit
        // file cannot be opened, nothing has changed yet.
        audit::configure(&merged.audit).map_err(|err| {
            format!(
                "cannot open audit.file {}: {err}",
                merged.audit.file.display()
            )
        })?;
        if let Some(log) = &self.log {
            if let Err(err) = log.apply(&merged.log) {
                tracing::warn!(%err, "could not apply the new log settings");
            }
        }
        self.limiters.reconfigure(&merged.limits);
        self.connections
            .set_max_per_address(merged.limits.max_connections_per_ip);
        self.client_addr.set(merged.server.trusted_proxies.clone());
        self.live.store(merged);
        Ok(Reloaded {
            applied,
            needs_restart,
        })
    }
}

/// `loaded`, with the running value of each key in `restart_only`.
fn keep(
    loaded: &Settings,
    current: &Settings,
    restart_only: &[String],
) -> Result<Settings, String> {
    let running = keys::flatten(current);
    let mut table = toml::Table::try_from(loaded).map_err(|err| err.to_string())?;
    for key in restart_only {
        let (Some((section, name)), Some(value)) = (key.split_once('.'), running.get(key)) else {
            continue;
        };
        if let Some(toml::Value::Table(section)) = table.get_mut(section) {
            section.insert(name.to_owned(), value.clone());
        }
    }
    toml::Value::Table(table)
        .try_into()
        .map_err(|err: toml::de::Error| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_only_keys_keep_their_running_value() {
        let current = Settings::defaults();
        let mut loaded = current.clone();
        loaded.server.workers = 7;
        loaded.limits.max_body_bytes = 1000;
        let changed = keys::changed(&current, &loaded);
        assert_eq!(changed, ["limits.max_body_bytes", "server.workers"]);
        let merged = keep(&loaded, &current, &["server.workers".to_owned()]).unwrap();
        assert_eq!(merged.server.workers, current.server.workers);
        assert_eq!(merged.limits.max_body_bytes, 1000);
    }
}
