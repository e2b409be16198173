//! Settings from the environment: any value of any key (and any key) never panics; a value
//! that is refused is refused with a message that names its key and its variable.

use std::collections::HashMap;

use config::Environment;
use hermit_relay::config::{keys, ConfigError, Settings, ENV_PREFIX};
use proptest::prelude::*;

/// Every key the settings have, `section.key`.
fn all_keys() -> Vec<String> {
    keys::flatten(&Settings::defaults()).into_keys().collect()
}

/// Values an operator (or a typo) might write: numbers in and out of range, booleans,
/// lists, addresses, durations with units, and anything at all.
fn env_value() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => any::<u64>().prop_map(|n| n.to_string()),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => (0u64..100_000).prop_map(|n| n.to_string()),
        1 => any::<f64>().prop_map(|n| n.to_string()),
        1 => prop::sample::select(vec![
            "", " ", "true", "false", "yes", "0", "-1", "1e3", "NaN", "inf", "0.0.0.0:0",
            "127.0.0.1:8080", "[::1]:99999", "10.0.0.0/8", "10.0.0.0/8,::/0", "a,b,,c", "json",
            "pretty", "info", "hermit=debug,warn", "x-forwarded-for", "forwarded", "open",
            "closed", "sqlite://", "postgres://u:p@h/db", "30s", "\u{0}", "ÄÖÜ", "*",
        ]).prop_map(str::to_owned),
        2 => any::<String>(),
    ]
}

fn load(vars: &[(String, String)]) -> Result<Settings, ConfigError> {
    let map: HashMap<String, String> = vars.iter().cloned().collect();
    Settings::load_from(None, Environment::with_prefix(ENV_PREFIX).source(Some(map)))
}

proptest! {
    #[test]
    fn any_value_of_any_setting_is_taken_or_refused_by_name(
        picks in prop::collection::vec((any::<prop::sample::Index>(), env_value()), 1..3),
    ) {
        let keys = all_keys();
        let vars: Vec<(String, String)> = picks
            .iter()
            .map(|(at, value)| (keys::env_var(at.get::<String>(&keys)), value.clone()))
            .collect();
        match load(&vars) {
            Ok(settings) => {
                // What check-config and a reload do next must not panic either.
                let _ = settings.to_toml();
                let _ = keys::flatten(&settings);
                prop_assert!(settings.validate().is_ok());
            }
            Err(err) => {
                let text = err.to_string();
                prop_assert!(text.starts_with("configuration error: "), "{}", text);
                let named = vars.iter().any(|(var, _)| text.contains(var.as_str()));
                let key_named = picks.iter().any(|(at, _)| text.contains(at.get::<String>(&keys).as_str()));
                prop_assert!(named || key_named, "{:?} refused without naming it: {}", vars, text);
            }
        }
    }

    #[test]
    fn an_unknown_setting_is_refused_by_name(
        section in "[a-z]{1,10}", key in "[a-z]{1,10}(_[a-z]{1,6})?", value in env_value(),
    ) {
        let name = format!("{section}.{key}");
        prop_assume!(!all_keys().contains(&name));
        let var = format!("{ENV_PREFIX}__{}__{}", section.to_uppercase(), key.to_uppercase());
        // A known section with an unknown key must be refused; an unknown section too.
        let text = match load(&[(var.clone(), value)]) {
            Ok(_) => return Err(TestCaseError::fail(format!("{var} was accepted"))),
            Err(err) => err.to_string(),
        };
        prop_assert!(text.contains(&key) || text.contains(&section), "{}: {}", var, text);
    }
}
