//! The catalogue of keys: which ones a running relay takes on `SIGHUP`, where each value
//! came from (for error messages), and environment variables that look like settings but
//! are not.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::settings::{ConfigError, Origin, Refusal, Settings, ENV_PREFIX};

/// Keys a running relay takes on `SIGHUP`, for new work: new connections, requests and
/// attempts use the new value at once; open connections keep the value they started with.
/// Every other key needs a restart (a reload that changes one logs "needs a restart" and
/// keeps the running value).
pub const LIVE: [&str; 24] = [
    "server.trusted_proxies",
    "server.allowed_origins",
    "auth.registration",
    "auth.allowed_emails",
    "auth.deadline_secs",
    "pairing.ack_interval_ms",
    "pairing.ack_ping_interval_secs",
    "pairing.idle_unpaired_timeout_secs",
    "heartbeat.interval_secs",
    "heartbeat.timeout_secs",
    "limits.max_message_bytes",
    "limits.max_outbound_bytes",
    "limits.max_connections_per_ip",
    "limits.join_attempts_per_minute",
    "limits.auth_attempts_per_minute",
    "limits.max_body_bytes",
    "limits.max_tracked_addresses",
    "log.format",
    "log.level",
    "metrics.enabled",
    "metrics.token",
    "audit.target",
    "audit.file",
    "admin.poll_interval_ms",
];

/// Whether a running relay takes `key` on reload.
pub fn is_live(key: &str) -> bool {
    LIVE.contains(&key)
}

/// Every leaf key with its value, `section.key` → value.
pub fn flatten(settings: &Settings) -> BTreeMap<String, toml::Value> {
    let mut keys = BTreeMap::new();
    // unwrap: `Settings` is tables of scalars and lists, which TOML always expresses.
    let toml::Value::Table(sections) = toml::Value::try_from(settings).unwrap() else {
        return keys;
    };
    for (section, table) in sections {
        if let toml::Value::Table(table) = table {
            for (key, value) in table {
                keys.insert(format!("{section}.{key}"), value);
            }
        }
    }
    keys
}

/// Keys whose values differ between `old` and `new`, in order.
pub fn changed(old: &Settings, new: &Settings) -> Vec<String> {
    let (old, new) = (flatten(old), flatten(new));
    new.into_iter()
        .filter(|(key, value)| old.get(key) != Some(value))
        .map(|(key, _)| key)
        .collect()
}

/// The environment variable that sets `key`: `server.bind` → `HERMIT__SERVER__BIND`.
pub fn env_var(key: &str) -> String {
    format!(
        "{ENV_PREFIX}__{}",
        key.replace('.', "__").to_ascii_uppercase()
    )
}

/// Which layer set each key, to say where a refused value came from.
pub struct Origins {
    file: Option<(PathBuf, BTreeSet<String>)>,
    env: BTreeSet<String>,
}

impl Origins {
    /// The keys set by `file` (if it parses; if not, loading reports that) and by the
    /// environment (`env_keys` as the environment source collects them: `server.bind`).
    pub fn new<'a>(file: Option<&Path>, env_keys: impl Iterator<Item = &'a String>) -> Self {
        let file = file.map(|path| {
            let keys = std::fs::read_to_string(path)
                .ok()
                .and_then(|text| text.parse::<toml::Table>().ok())
                .map(|table| {
                    table
                        .iter()
                        .flat_map(|(section, value)| match value {
                            toml::Value::Table(keys) => keys
                                .keys()
                                .map(|key| format!("{section}.{key}"))
                                .collect::<Vec<_>>(),
                            _ => vec![section.clone()],
                        })
                        .collect()
                })
                .unwrap_or_default();
            (path.to_owned(), keys)
        });
        Self {
            file,
            env: env_keys.map(|key| key.to_ascii_lowercase()).collect(),
        }
    }

    /// Where `key`'s value came from: the environment beats the file beats the default.
    pub fn of(&self, key: &str) -> Origin {
        if self.env.contains(key) {
            return Origin::Env(env_var(key));
        }
        match &self.file {
            Some((path, keys)) if keys.contains(key) => Origin::File(path.clone()),
            _ => Origin::Default,
        }
    }

    /// A refusal of [`super::check`], with its origin.
    pub fn invalid(&self, refusal: Refusal) -> ConfigError {
        let origin = self.of(refusal.key);
        ConfigError::Invalid {
            key: refusal.key.to_owned(),
            problem: refusal.problem,
            origin,
        }
    }

    /// A loading error, rewritten to name its key and origin once.
    pub fn explain(&self, err: config::ConfigError) -> ConfigError {
        use config::ConfigError as E;
        let (key, problem) = match err {
            E::Type {
                unexpected,
                expected,
                key: Some(key),
                ..
            } => (key, format!("is {unexpected}; expected {expected}")),
            E::At {
                error,
                key: Some(key),
                ..
            } => match unknown_field(&error.to_string()) {
                Some((field, problem)) => (format!("{key}.{field}"), problem),
                None => (key, error.to_string()),
            },
            E::Message(message) => match unknown_field(&message) {
                Some((field, problem)) => (field, problem),
                None => return ConfigError::Load(message),
            },
            E::FileParse { uri, cause } => {
                let file = uri.unwrap_or_else(|| "the configuration file".into());
                return ConfigError::Load(format!("{file} is not valid TOML: {cause}"));
            }
            other => return ConfigError::Load(other.to_string()),
        };
        let origin = self.of(&key);
        ConfigError::Invalid {
            key,
            problem,
            origin,
        }
    }
}

/// serde's "unknown field `x`, expected one of …" as (`x`, our wording).
fn unknown_field(message: &str) -> Option<(String, String)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, rest) = rest.split_once('`')?;
    let known = rest
        .strip_prefix(", expected one of ")
        .or_else(|| rest.strip_prefix(", expected "))
        .unwrap_or("")
        .replace('`', "");
    Some((
        field.to_owned(),
        format!("is not a setting (the keys here are: {known})"),
    ))
}

/// Environment variables that start like a setting but are not read as one, each with a
/// warning naming it. Settings are `HERMIT__SECTION__KEY` (two underscores each time);
/// `HERMIT_CONFIG` names the file.
pub fn unknown_env_vars(names: impl IntoIterator<Item = String>) -> Vec<String> {
    let double = format!("{ENV_PREFIX}__");
    names
        .into_iter()
        .filter(|name| {
            let upper = name.to_ascii_uppercase();
            upper.starts_with(ENV_PREFIX) && !upper.starts_with(&double) && upper != "HERMIT_CONFIG"
        })
        .map(|name| {
            format!(
                "environment variable {name} is not a setting and is ignored: settings are \
                 {ENV_PREFIX}__<SECTION>__<KEY> with two underscores each time, e.g. \
                 {ENV_PREFIX}__SERVER__BIND"
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn look_alike_variables_are_named() {
        let warnings = unknown_env_vars(
            [
                "HERMIT_SERVER__BIND",
                "HERMIT__SERVER__BIND",
                "HERMIT_CONFIG",
                "PATH",
                "hermitage",
            ]
            .map(String::from),
        );
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("HERMIT_SERVER__BIND"));
        assert!(warnings[1].contains("hermitage"));
    }

    #[test]
    fn every_live_key_exists() {
        let keys = flatten(&Settings::defaults());
        for key in LIVE {
            assert!(keys.contains_key(key), "{key}");
        }
    }
}
