//! Loading, layering and refusing settings.

use super::*;
use std::collections::HashMap;

fn env(vars: &[(&str, &str)]) -> Environment {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Environment::with_prefix(ENV_PREFIX).source(Some(map))
}

#[test]
fn the_embedded_defaults_load_and_validate() {
    let s = Settings::defaults();
    assert_eq!(s.server.bind.to_string(), "127.0.0.1:8080");
    assert_eq!(s.pairing.code_ttl_secs, 300);
    assert_eq!(s.pairing.code_length, 6);
    assert_eq!(s.pairing.code_alphabet, "346789ABCDEFGHJKLMNPQRTUVWXY");
    assert_eq!(s.heartbeat.interval_secs, 30);
    assert_eq!(s.heartbeat.timeout_secs, 10);
    assert!(s.limits.max_message_bytes >= 1024 * 1024);
}

#[test]
fn environment_variables_override_nested_keys() {
    let s = Settings::load_from(
        None,
        env(&[
            ("HERMIT__SERVER__BIND", "0.0.0.0:9000"),
            ("HERMIT__PAIRING__CODE_TTL_SECS", "2"),
        ]),
    )
    .unwrap();
    assert_eq!(s.server.bind.to_string(), "0.0.0.0:9000");
    assert_eq!(s.pairing.code_ttl_secs, 2);
}

#[test]
fn a_file_overrides_defaults_and_the_environment_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(
        &path,
        "[pairing]\ncode_ttl_secs = 60\nresume_grace_secs = 5\n",
    )
    .unwrap();
    let s = Settings::load_from(
        Some(&path),
        env(&[("HERMIT__PAIRING__RESUME_GRACE_SECS", "7")]),
    )
    .unwrap();
    assert_eq!(s.pairing.code_ttl_secs, 60);
    assert_eq!(s.pairing.resume_grace_secs, 7);
    assert_eq!(s.heartbeat.interval_secs, 30);
}

#[test]
fn an_invalid_value_is_refused_naming_its_key() {
    let err = Settings::load_from(None, env(&[("HERMIT__PAIRING__CODE_LENGTH", "2")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("pairing.code_length"), "{err}");

    let err = Settings::load_from(None, env(&[("HERMIT__LIMITS__MAX_OUTBOUND_BYTES", "2000")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("limits.max_outbound_bytes"), "{err}");

    let err = Settings::load_from(
        None,
        env(&[("HERMIT__PAIRING__RESUME_BUFFER_BYTES", "8388608")]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("pairing.resume_buffer_bytes"), "{err}");
}

#[test]
fn a_value_of_the_wrong_type_is_refused_naming_its_key() {
    let err = Settings::load_from(None, env(&[("HERMIT__PAIRING__CODE_TTL_SECS", "soon")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("code_ttl_secs"), "{err}");
}

#[test]
fn an_unknown_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, "[pairing]\ncode_tll_secs = 60\n").unwrap();
    let err = Settings::load_from(Some(&path), env(&[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("code_tll_secs"), "{err}");
}

#[test]
fn database_passwords_are_masked_in_the_printed_settings() {
    let s = Settings::load_from(
        None,
        env(&[(
            "HERMIT__DATABASE__URL",
            "postgres://relay:s3cret@db:5432/hermit",
        )]),
    )
    .unwrap();
    let printed = s.to_toml();
    assert!(!printed.contains("s3cret"), "{printed}");
    assert!(
        printed.contains("postgres://relay:***@db:5432/hermit"),
        "{printed}"
    );
    assert_eq!(
        mask_url_password("sqlite://data/x.db"),
        "sqlite://data/x.db"
    );
}

#[test]
fn an_unsupported_database_url_is_refused_naming_its_key() {
    let err = Settings::load_from(None, env(&[("HERMIT__DATABASE__URL", "mysql://x")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("database.url"), "{err}");
}

#[test]
fn list_keys_take_comma_separated_environment_values() {
    let s = Settings::load_from(
        None,
        env(&[
            ("HERMIT__SERVER__TRUSTED_PROXIES", "10.0.0.0/8,127.0.0.1/32"),
            (
                "HERMIT__SERVER__ALLOWED_ORIGINS",
                "https://a.example,https://b.example",
            ),
        ]),
    )
    .unwrap();
    let proxies: Vec<String> = s
        .server
        .trusted_proxies
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(proxies, ["10.0.0.0/8", "127.0.0.1/32"]);
    assert_eq!(
        s.server.allowed_origins,
        ["https://a.example", "https://b.example"]
    );
}

#[test]
fn a_bad_proxy_cidr_is_refused() {
    let err = Settings::load_from(
        None,
        env(&[("HERMIT__SERVER__TRUSTED_PROXIES", "10.0.0.0/99")]),
    );
    assert!(err.unwrap_err().to_string().contains("trusted_proxies"));
}

#[test]
fn a_missing_config_file_is_an_error() {
    let err = Settings::load_from(Some(Path::new("/nonexistent/relay.toml")), env(&[]));
    assert!(err.is_err());
}

#[test]
fn the_effective_settings_print_as_toml_that_loads_again() {
    let s = Settings::defaults();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("printed.toml");
    std::fs::write(&path, s.to_toml()).unwrap();
    let again = Settings::load_from(Some(&path), env(&[])).unwrap();
    assert_eq!(again.to_toml(), s.to_toml());
}

/// The error text of loading `file_text` (if any) under the environment `vars`.
fn refusal(file_text: Option<&str>, vars: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    if let Some(text) = file_text {
        std::fs::write(&path, text).unwrap();
    }
    Settings::load_from(file_text.map(|_| path.as_path()), env(vars))
        .unwrap_err()
        .to_string()
}

#[test]
fn a_zero_heartbeat_timeout_is_refused_naming_its_key() {
    let err = refusal(None, &[("HERMIT__HEARTBEAT__TIMEOUT_SECS", "0")]);
    assert!(err.contains("`heartbeat.timeout_secs` is 0"), "{err}");
    assert!(err.contains("between 1 and 3600"), "{err}");
}

#[test]
fn a_log_level_that_is_not_a_level_is_refused() {
    let err = refusal(Some("[log]\nlevel = \"warning\"\n"), &[]);
    assert!(err.contains("`log.level`"), "{err}");
    assert!(err.contains("\"warning\""), "{err}");
    assert!(err.contains("warn"), "{err}");
}

#[test]
fn values_outside_their_range_are_refused() {
    for (var, key) in [
        (
            "HERMIT__HEARTBEAT__INTERVAL_SECS",
            "heartbeat.interval_secs",
        ),
        ("HERMIT__DATABASE__POOL_SIZE", "database.pool_size"),
        ("HERMIT__LIMITS__MAX_BODY_BYTES", "limits.max_body_bytes"),
        ("HERMIT__ADMIN__POLL_INTERVAL_MS", "admin.poll_interval_ms"),
    ] {
        let err = refusal(None, &[(var, "99999999999")]);
        assert!(err.contains(&format!("`{key}`")), "{err}");
    }
}

#[test]
fn choices_are_case_insensitive_and_errors_list_the_valid_ones() {
    let s = Settings::load_from(
        None,
        env(&[
            ("HERMIT__LOG__FORMAT", "JSON"),
            ("HERMIT__AUTH__REGISTRATION", "Closed"),
        ]),
    )
    .unwrap();
    assert_eq!(s.log.format, LogFormat::Json);
    assert_eq!(s.auth.registration, Registration::Closed);
    let err = refusal(None, &[("HERMIT__AUTH__REGISTRATION", "invite")]);
    assert!(err.contains("`auth.registration`"), "{err}");
    assert!(err.contains(r#""open", "closed", "allowlist""#), "{err}");
}

#[test]
fn a_host_name_bind_shows_the_ip_port_form() {
    let err = refusal(Some("[server]\nbind = \"localhost:8080\"\n"), &[]);
    assert!(err.contains("`server.bind`"), "{err}");
    assert!(err.contains("IP:PORT"), "{err}");
    assert!(err.contains("127.0.0.1:8080"), "{err}");
}

#[test]
fn errors_say_whether_the_value_came_from_the_file_or_the_environment() {
    let file = "[heartbeat]\ntimeout_secs = 0\n";
    let err = refusal(Some(file), &[]);
    assert!(err.contains("set in "), "{err}");
    assert!(err.contains("relay.toml"), "{err}");
    let err = refusal(Some(file), &[("HERMIT__HEARTBEAT__TIMEOUT_SECS", "0")]);
    assert!(
        err.contains("environment variable HERMIT__HEARTBEAT__TIMEOUT_SECS"),
        "{err}"
    );
    let err = refusal(None, &[("HERMIT__PAIRING__CODE_TTL_SECS", "soon")]);
    assert!(err.contains("`pairing.code_ttl_secs`"), "{err}");
    assert!(err.contains("HERMIT__PAIRING__CODE_TTL_SECS"), "{err}");
    let err = refusal(Some("[pairing]\ncode_tll_secs = 60\n"), &[]);
    assert!(
        err.contains("`pairing.code_tll_secs` is not a setting"),
        "{err}"
    );
    assert!(err.contains("relay.toml"), "{err}");
}

#[test]
fn a_bare_proxy_address_is_one_host_and_lists_accept_spaces() {
    let s = Settings::load_from(
        None,
        env(&[
            (
                "HERMIT__SERVER__TRUSTED_PROXIES",
                "10.0.0.5, 10.1.0.0/16, fd00::1",
            ),
            (
                "HERMIT__SERVER__ALLOWED_ORIGINS",
                "https://a.example, https://b.example",
            ),
            (
                "HERMIT__AUTH__ALLOWED_EMAILS",
                "ada@example.com, *@example.org",
            ),
        ]),
    )
    .unwrap();
    let proxies: Vec<String> = s
        .server
        .trusted_proxies
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(proxies, ["10.0.0.5/32", "10.1.0.0/16", "fd00::1/128"]);
    assert_eq!(
        s.server.allowed_origins,
        ["https://a.example", "https://b.example"]
    );
    assert_eq!(s.auth.allowed_emails, ["ada@example.com", "*@example.org"]);
    let file = "[server]\ntrusted_proxies = [\"10.0.0.5\"]\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, file).unwrap();
    let s = Settings::load_from(Some(&path), env(&[])).unwrap();
    assert_eq!(s.server.trusted_proxies[0].to_string(), "10.0.0.5/32");
}

#[test]
fn an_allowlist_without_addresses_is_refused() {
    let err = refusal(None, &[("HERMIT__AUTH__REGISTRATION", "allowlist")]);
    assert!(err.contains("`auth.allowed_emails`"), "{err}");
    let err = refusal(
        None,
        &[
            ("HERMIT__AUTH__REGISTRATION", "allowlist"),
            ("HERMIT__AUTH__ALLOWED_EMAILS", "example.com"),
        ],
    );
    assert!(err.contains("*@example.com"), "{err}");
}

#[test]
fn the_allowlist_matches_addresses_and_domains() {
    let mut auth = Settings::defaults().auth;
    auth.registration = Registration::Allowlist;
    auth.allowed_emails = vec!["Ada@Example.com".into(), "*@team.example".into()];
    assert!(auth.may_register("ada@example.com"));
    assert!(auth.may_register("bob@team.example"));
    assert!(!auth.may_register("bob@example.com"));
    assert!(!auth.may_register("bob@evil-team.example"));
    auth.registration = Registration::Closed;
    assert!(!auth.may_register("ada@example.com"));
    auth.registration = Registration::Open;
    assert!(auth.may_register("anyone@anywhere.example"));
}

#[test]
fn an_error_is_one_line_without_a_repeated_cause() {
    let err =
        Settings::load_from(None, env(&[("HERMIT__HEARTBEAT__TIMEOUT_SECS", "0")])).unwrap_err();
    assert!(std::error::Error::source(&err).is_none());
    assert_eq!(err.to_string().lines().count(), 1);
}

#[test]
fn the_debug_form_hides_the_database_password_and_metrics_token() {
    let mut s = Settings::defaults();
    s.database.url = "postgres://relay:s3cret@db:5432/hermit?password=hunter2".into();
    s.metrics.token = "m3trics-t0ken".into();
    let shown = format!("{s:?}");
    for secret in ["s3cret", "hunter2", "m3trics-t0ken"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    assert!(
        shown.contains("postgres://relay:***@db:5432/hermit?***"),
        "{shown}"
    );
    assert!(
        shown.contains("biscuit-root.key"),
        "the key path may show: {shown}"
    );
}

#[test]
fn accepted_public_keys_must_be_public_keys() {
    let key = biscuit_auth::KeyPair::new().public().to_string();
    let s = Settings::load_from(
        None,
        env(&[(
            "HERMIT__AUTH__ACCEPTED_PUBLIC_KEYS",
            &format!("{key},{key}"),
        )]),
    )
    .unwrap();
    assert_eq!(s.auth.accepted_public_keys, [key.clone(), key]);
    let err = Settings::load_from(
        None,
        env(&[("HERMIT__AUTH__ACCEPTED_PUBLIC_KEYS", "ed25519/beef")]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("auth.accepted_public_keys"), "{err}");
}

/// `[cluster]` settings (`config/cluster.rs`).
mod cluster {
    use std::collections::HashMap;

    use config::Environment;

    use crate::config::{mask_url_password, Settings, ENV_PREFIX};

    fn load(vars: &[(&str, &str)]) -> Result<Settings, String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load_from(None, Environment::with_prefix(ENV_PREFIX).source(Some(map)))
            .map_err(|err| err.to_string())
    }

    const PG: (&str, &str) = ("HERMIT__DATABASE__URL", "postgres://relay:pw@db/hermit");

    #[test]
    fn by_default_there_is_no_cluster() {
        let s = Settings::defaults();
        assert!(!s.cluster.enabled());
        assert_eq!(s.cluster.key_prefix, "hermit");
        assert!(s.cluster.node_timeout_secs <= 10);
    }

    #[test]
    fn a_redis_url_with_a_sqlite_database_is_refused_with_a_clear_message() {
        let err = load(&[("HERMIT__CLUSTER__REDIS_URL", "redis://127.0.0.1:6379")]).unwrap_err();
        assert!(err.contains("`cluster.redis_url`"), "{err}");
        assert!(err.contains("sqlite://"), "{err}");
        assert!(err.contains("PostgreSQL"), "{err}");
        let ok = load(&[("HERMIT__CLUSTER__REDIS_URL", "redis://127.0.0.1:6379"), PG]).unwrap();
        assert!(ok.cluster.enabled());
    }

    #[test]
    fn tls_and_other_schemes_are_refused() {
        for url in ["rediss://cache:6380", "http://cache"] {
            let err = load(&[("HERMIT__CLUSTER__REDIS_URL", url), PG]).unwrap_err();
            assert!(err.contains("`cluster.redis_url`"), "{err}");
        }
    }

    #[test]
    fn node_ids_and_timing_are_checked() {
        let err = load(&[("HERMIT__CLUSTER__NODE_ID", "a b")]).unwrap_err();
        assert!(err.contains("`cluster.node_id`"), "{err}");
        let err = load(&[("HERMIT__CLUSTER__HEARTBEAT_MS", "10000")]).unwrap_err();
        assert!(err.contains("`cluster.heartbeat_ms`"), "{err}");
        let err = load(&[("HERMIT__CLUSTER__NODE_TIMEOUT_SECS", "0")]).unwrap_err();
        assert!(err.contains("`cluster.node_timeout_secs`"), "{err}");
    }

    #[test]
    fn link_addresses_are_checked() {
        let s = Settings::defaults();
        assert_eq!(s.cluster.link_listen, "0.0.0.0:0");
        assert_eq!(s.cluster.link_advertise, "");
        for listen in ["relay-1:7400", "7400", ""] {
            let err = load(&[("HERMIT__CLUSTER__LINK_LISTEN", listen)]).unwrap_err();
            assert!(err.contains("`cluster.link_listen`"), "{listen}: {err}");
        }
        let err = load(&[("HERMIT__CLUSTER__LINK_ADVERTISE", "relay 1")]).unwrap_err();
        assert!(err.contains("`cluster.link_advertise`"), "{err}");
        let ok = load(&[
            ("HERMIT__CLUSTER__LINK_LISTEN", "10.0.0.5:7400"),
            ("HERMIT__CLUSTER__LINK_ADVERTISE", "relay-1.internal"),
        ])
        .unwrap();
        assert_eq!(ok.cluster.link_listen, "10.0.0.5:7400");
        assert_eq!(s.cluster.max_links, 1024);
        let err = load(&[("HERMIT__CLUSTER__MAX_LINKS", "0")]).unwrap_err();
        assert!(err.contains("`cluster.max_links`"), "{err}");
    }

    #[test]
    fn the_redis_password_is_masked_when_printed() {
        let s = load(&[
            ("HERMIT__CLUSTER__REDIS_URL", "redis://:s3cret@cache:6379/0"),
            PG,
        ])
        .unwrap();
        let printed = s.to_toml();
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(printed.contains("redis://:***@cache:6379/0"), "{printed}");
        assert!(!format!("{s:?}").contains("s3cret"));
        assert_eq!(
            mask_url_password("redis://cache:6379"),
            "redis://cache:6379"
        );
    }
}
