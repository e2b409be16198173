//! What the relay refuses to start (or reload) with: every number outside its range,
//! values that contradict each other, and values that would silently break something —
//! `heartbeat.timeout_secs = 0` drops every live connection after one interval, and
//! `log.level = "warning"` (a target name, not a level) silences every log line.

use super::settings::{Refusal, Settings};
use super::values::Registration;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
const DAY: u64 = 86_400;

/// The levels a `log.level` directive may name.
const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

fn refuse(key: &'static str, problem: impl Into<String>) -> Result<(), Refusal> {
    Err(Refusal {
        key,
        problem: problem.into(),
    })
}

/// A setting whose number TOML cannot hold (above `i64::MAX`, possible from the
/// environment): `check-config` and reloads, which write the settings out as TOML, would
/// panic on it (found by the property tests in `tests/properties/settings.rs`). The key is
/// leaked to be `'static` like every other refusal's: this happens at most once, on a
/// refused configuration.
fn too_large_for_toml(s: &Settings) -> Option<&'static str> {
    let serde_json::Value::Object(sections) = serde_json::to_value(s).ok()? else {
        return None;
    };
    for (section, keys) in sections {
        for (key, value) in keys.as_object().into_iter().flatten() {
            let values = value
                .as_array()
                .map_or(vec![value], |list| list.iter().collect());
            if values
                .iter()
                .any(|v| v.as_u64().is_some_and(|n| n > i64::MAX as u64))
            {
                return Some(Box::leak(format!("{section}.{key}").into_boxed_str()));
            }
        }
    }
    None
}

/// Every numeric setting with its inclusive range.
fn ranges(s: &Settings) -> Vec<(&'static str, u64, u64, u64)> {
    let n = |v: usize| v as u64;
    vec![
        ("server.workers", n(s.server.workers), 0, 1024),
        (
            "server.max_connections_per_worker",
            n(s.server.max_connections_per_worker),
            1,
            1_000_000,
        ),
        (
            "server.shutdown_timeout_secs",
            s.server.shutdown_timeout_secs,
            0,
            3600,
        ),
        (
            "database.pool_size",
            u64::from(s.database.pool_size),
            1,
            1000,
        ),
        (
            "database.connect_timeout_secs",
            s.database.connect_timeout_secs,
            1,
            300,
        ),
        (
            "auth.access_token_ttl_secs",
            s.auth.access_token_ttl_secs,
            1,
            7 * DAY,
        ),
        (
            "auth.refresh_token_ttl_secs",
            s.auth.refresh_token_ttl_secs,
            1,
            366 * DAY,
        ),
        (
            "auth.max_concurrent_hashes",
            n(s.auth.max_concurrent_hashes),
            1,
            256,
        ),
        (
            "auth.hash_queue_timeout_secs",
            s.auth.hash_queue_timeout_secs,
            0,
            300,
        ),
        ("auth.deadline_secs", s.auth.deadline_secs, 1, 3600),
        (
            "auth.token_purge_interval_secs",
            s.auth.token_purge_interval_secs,
            1,
            7 * DAY,
        ),
        ("pairing.code_ttl_secs", s.pairing.code_ttl_secs, 1, DAY),
        ("pairing.code_length", n(s.pairing.code_length), 4, 32),
        (
            "pairing.resume_grace_secs",
            s.pairing.resume_grace_secs,
            0,
            DAY,
        ),
        (
            "pairing.resume_buffer_bytes",
            n(s.pairing.resume_buffer_bytes),
            0,
            GIB,
        ),
        (
            "pairing.replay_window_bytes",
            n(s.pairing.replay_window_bytes),
            KIB,
            GIB,
        ),
        (
            "pairing.ack_interval_ms",
            s.pairing.ack_interval_ms,
            1,
            60_000,
        ),
        (
            "pairing.ack_ping_interval_secs",
            s.pairing.ack_ping_interval_secs,
            1,
            3600,
        ),
        (
            "pairing.idle_unpaired_timeout_secs",
            s.pairing.idle_unpaired_timeout_secs,
            1,
            DAY,
        ),
        (
            "pairing.retired_code_memory_secs",
            s.pairing.retired_code_memory_secs,
            0,
            DAY,
        ),
        (
            "heartbeat.interval_secs",
            s.heartbeat.interval_secs,
            1,
            3600,
        ),
        ("heartbeat.timeout_secs", s.heartbeat.timeout_secs, 1, 3600),
        (
            "limits.max_message_bytes",
            n(s.limits.max_message_bytes),
            KIB,
            64 * MIB,
        ),
        (
            "limits.max_outbound_bytes",
            n(s.limits.max_outbound_bytes),
            KIB,
            GIB,
        ),
        (
            "limits.max_pending_codes",
            n(s.limits.max_pending_codes),
            1,
            10_000_000,
        ),
        (
            "limits.max_connections_per_ip",
            n(s.limits.max_connections_per_ip),
            1,
            1_000_000,
        ),
        (
            "limits.join_attempts_per_minute",
            u64::from(s.limits.join_attempts_per_minute),
            1,
            1_000_000,
        ),
        (
            "limits.auth_attempts_per_minute",
            u64::from(s.limits.auth_attempts_per_minute),
            1,
            1_000_000,
        ),
        (
            "limits.max_body_bytes",
            n(s.limits.max_body_bytes),
            256,
            MAX_BODY_BYTES as u64,
        ),
        (
            "limits.max_tracked_addresses",
            n(s.limits.max_tracked_addresses),
            1,
            10_000_000,
        ),
        (
            "server.body_timeout_secs",
            s.server.body_timeout_secs,
            1,
            3600,
        ),
        ("server.linger_secs", s.server.linger_secs, 0, 600),
        ("server.linger_bytes", n(s.server.linger_bytes), 0, GIB),
        (
            "server.max_lingering",
            n(s.server.max_lingering),
            0,
            1_000_000,
        ),
        (
            "database.health_check_interval_ms",
            s.database.health_check_interval_ms,
            50,
            3_600_000,
        ),
        (
            "database.outage_log_interval_secs",
            s.database.outage_log_interval_secs,
            1,
            DAY,
        ),
        (
            "auth.device_token_ttl_secs",
            s.auth.device_token_ttl_secs,
            1,
            3660 * DAY,
        ),
        (
            "auth.max_queued_hashes",
            n(s.auth.max_queued_hashes),
            1,
            1_000_000,
        ),
        (
            "auth.max_queued_hashes_per_address",
            n(s.auth.max_queued_hashes_per_address),
            1,
            1_000_000,
        ),
        (
            "auth.hash_memory_release_secs",
            s.auth.hash_memory_release_secs,
            1,
            DAY,
        ),
        (
            "auth.refresh_retry_grace_secs",
            s.auth.refresh_retry_grace_secs,
            0,
            3600,
        ),
        (
            "limits.max_http_connections_per_ip",
            n(s.limits.max_http_connections_per_ip),
            1,
            1_000_000,
        ),
        (
            "limits.failed_joins_per_minute",
            u64::from(s.limits.failed_joins_per_minute),
            1,
            100_000_000,
        ),
        (
            "limits.failed_joins_per_network_per_minute",
            u64::from(s.limits.failed_joins_per_network_per_minute),
            1,
            100_000_000,
        ),
        (
            "limits.max_machines_per_user",
            n(s.limits.max_machines_per_user),
            1,
            1_000_000,
        ),
        (
            "limits.login_failures_per_account_per_hour",
            u64::from(s.limits.login_failures_per_account_per_hour),
            1,
            1_000_000,
        ),
        (
            "limits.max_tracked_accounts",
            n(s.limits.max_tracked_accounts),
            1,
            10_000_000,
        ),
        (
            "admin.poll_interval_ms",
            s.admin.poll_interval_ms,
            100,
            60_000,
        ),
        // Not a number in the file, but bounded all the same.
        (
            "pairing.code_alphabet",
            n(s.pairing.code_alphabet.len()),
            16,
            256,
        ),
    ]
}

/// The largest `limits.max_body_bytes` accepted: the ceiling of the JSON extractor, under
/// which the live limit is enforced (so the limit can be raised on reload up to here).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Checks every setting; the first problem found is returned.
pub fn settings(s: &Settings) -> Result<(), Refusal> {
    if let Some(key) = too_large_for_toml(s) {
        return refuse(
            key,
            format!("is above {}, the largest a setting may be", i64::MAX),
        );
    }
    let mut numbers = ranges(s);
    numbers.extend(super::cluster::ranges(&s.cluster));
    for (key, value, min, max) in numbers {
        if !(min..=max).contains(&value) {
            let what = match key {
                "pairing.code_alphabet" => "has {value} characters; use between {min} and {max}",
                _ => "is {value}; use a value between {min} and {max}",
            };
            let problem = what
                .replace("{value}", &value.to_string())
                .replace("{min}", &min.to_string())
                .replace("{max}", &max.to_string());
            return refuse(key, problem);
        }
    }
    database(s)?;
    relations(s)?;
    lists(s)?;
    log_level(&s.log.level)?;
    alphabet(&s.pairing.code_alphabet)?;
    super::cluster::check(&s.cluster, &s.database.url)
        .map_err(|(key, problem)| Refusal { key, problem })?;
    Ok(())
}

/// Settings that work but deserve the operator's attention, said at start and by
/// `check-config`.
pub fn warnings(s: &Settings) -> Vec<String> {
    let mut warnings = Vec::new();
    let bind = s.server.bind.ip();
    if s.metrics.enabled && s.metrics.token.is_empty() && !bind.is_loopback() {
        warnings.push(format!(
            "/metrics has no token while the relay listens on {bind}, beyond this machine: \
             anyone who reaches the port can read it (traffic counts, no secrets). Set \
             metrics.token (HERMIT__METRICS__TOKEN), or keep /metrics off the public proxy"
        ));
    }
    warnings
}

fn database(s: &Settings) -> Result<(), Refusal> {
    let url = &s.database.url;
    if !(url.starts_with("sqlite://")
        || url.starts_with("postgres://")
        || url.starts_with("postgresql://"))
    {
        return refuse(
            "database.url",
            "must start with sqlite:// or postgres:// (or postgresql://)",
        );
    }
    let max = s.database.sqlite_max_bytes;
    if max != 0 && max < 65_536 {
        return refuse(
            "database.sqlite_max_bytes",
            format!("is {max}; use 0 (no limit) or at least 65536"),
        );
    }
    Ok(())
}

/// Values that must agree with each other.
fn relations(s: &Settings) -> Result<(), Refusal> {
    let l = &s.limits;
    if l.max_outbound_bytes < l.max_message_bytes {
        return refuse(
            "limits.max_outbound_bytes",
            "must be at least limits.max_message_bytes, or one message could never be sent",
        );
    }
    let p = &s.pairing;
    if p.replay_window_bytes > l.max_outbound_bytes {
        return refuse(
            "pairing.replay_window_bytes",
            "must not exceed limits.max_outbound_bytes: what a side has not acknowledged \
             must fit in its outbox when it resumes",
        );
    }
    if p.replay_window_bytes < l.max_message_bytes {
        return refuse(
            "pairing.replay_window_bytes",
            "must be at least limits.max_message_bytes, or one message could never be sent",
        );
    }
    if p.resume_buffer_bytes > l.max_outbound_bytes {
        return refuse(
            "pairing.resume_buffer_bytes",
            "must not exceed limits.max_outbound_bytes: what is held for an away side must \
             fit in its outbox when it comes back",
        );
    }
    if s.auth.registration == Registration::Allowlist && s.auth.allowed_emails.is_empty() {
        return refuse(
            "auth.allowed_emails",
            "is empty while auth.registration = \"allowlist\", so no one could register; \
             list addresses or *@domain patterns, or set registration = \"closed\"",
        );
    }
    Ok(())
}

fn lists(s: &Settings) -> Result<(), Refusal> {
    for origin in &s.server.allowed_origins {
        if !(origin.starts_with("http://") || origin.starts_with("https://"))
            || origin.ends_with('/')
        {
            return refuse(
                "server.allowed_origins",
                format!(
                    "has {origin:?}; entries look like https://app.example.com (scheme and \
                     host, no path)"
                ),
            );
        }
    }
    if s.auth
        .accepted_public_keys
        .iter()
        .any(|key| crate::auth::token::parse_public_key(key).is_none())
    {
        return refuse(
            "auth.accepted_public_keys",
            "entries must be public keys as check-config prints them (ed25519/<hex>)",
        );
    }
    for entry in &s.auth.allowed_emails {
        let pattern = entry
            .strip_prefix("*@")
            .map(|domain| format!("any@{domain}"));
        let candidate = pattern.as_deref().unwrap_or(entry);
        if !looks_like_email(candidate) {
            return refuse(
                "auth.allowed_emails",
                format!(
                    "has {entry:?}; entries are addresses (ada@example.com) or domain \
                     patterns (*@example.com)"
                ),
            );
        }
    }
    Ok(())
}

/// A `log.level` as `EnvFilter` reads it: its directives without the spaces around the
/// commas that people write.
pub fn normalise_filter(filter: &str) -> String {
    filter
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect::<Vec<_>>()
        .join(",")
}

/// `local@domain.tld`, no spaces (the full check is `accounts::normalise_email`, which
/// this leaf module does not import).
fn looks_like_email(text: &str) -> bool {
    match text.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
                && !text.chars().any(char::is_whitespace)
        }
        None => false,
    }
}

/// A `tracing` filter whose bare words are all levels. `EnvFilter` reads a bare word that
/// is not a level as a *target* to show at every level, so `"warning"` would be accepted
/// and hide every line; to name a target, write `target=level`.
fn log_level(filter: &str) -> Result<(), Refusal> {
    if filter.trim().is_empty() {
        return refuse("log.level", "is empty; use a level such as \"info\"");
    }
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let bare = !directive.contains(['=', '[']);
        if bare && !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(directive)) {
            return refuse(
                "log.level",
                format!(
                    "has {directive:?}, which is not a level; use one of {}, or \
                     target=level such as hermit_relay=debug",
                    LEVELS.join(", ")
                ),
            );
        }
    }
    if tracing_subscriber::EnvFilter::try_new(normalise_filter(filter)).is_err() {
        return refuse(
            "log.level",
            "is not a valid filter such as info or info,hermit_relay=debug",
        );
    }
    Ok(())
}

fn alphabet(alphabet: &str) -> Result<(), Refusal> {
    let chars: Vec<char> = alphabet.chars().collect();
    if !chars.iter().all(|c| c.is_ascii_alphanumeric()) {
        return refuse(
            "pairing.code_alphabet",
            "must have ASCII letters or digits only",
        );
    }
    let mut unique = chars.clone();
    unique.sort_unstable();
    unique.dedup();
    if unique.len() != chars.len() || chars.iter().any(|c| c.is_ascii_lowercase()) {
        return refuse(
            "pairing.code_alphabet",
            "must not repeat characters or use lower case (input is upper-cased)",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_levels_are_levels_or_target_level_pairs() {
        assert!(log_level("info").is_ok());
        assert!(log_level("WARN").is_ok());
        assert!(log_level("info, hermit_relay=debug").is_ok());
        assert!(log_level("warning").is_err());
        assert!(log_level("hermit_relay").is_err());
    }

    #[test]
    fn every_range_holds_for_the_defaults() {
        let s = Settings::defaults();
        for (key, value, min, max) in ranges(&s) {
            assert!((min..=max).contains(&value), "{key} = {value}");
        }
    }
}
