//! Settings: the operator's admin surface, loaded from TOML and the environment.
//!
//! Layers, later beats earlier: the embedded `config/default.toml`, then the file given by
//! `--config` (or `HERMIT_CONFIG`), then environment variables `HERMIT__<SECTION>__<KEY>`.
//! Unknown keys are errors, so a typo never silently falls back to a default; every error
//! names its key and where the value came from (see [`keys`]). Which keys a running relay
//! takes on `SIGHUP` is listed once, in [`keys::LIVE`].

pub mod check;
pub mod cluster;
pub mod keys;
pub mod settings;
pub mod values;

use std::path::Path;

use config::{Config, Environment, File, FileFormat, Source};

pub use cluster::ClusterSettings;
pub use settings::*;
pub use values::{
    mask_url_password, redact_url, AuditTarget, ForwardedHeader, LogFormat, Registration,
};

/// The defaults, compiled in so the binary runs with no files beside it.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Keys whose environment value is a comma-separated list.
const LIST_KEYS: [&str; 4] = [
    "server.trusted_proxies",
    "server.allowed_origins",
    "auth.allowed_emails",
    "auth.accepted_public_keys",
];

impl Settings {
    /// Loads the layered settings: defaults, then `file` if given, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, Environment::with_prefix(ENV_PREFIX))
    }

    /// Loads with an explicit environment source (tests pass a fixed map).
    pub fn load_from(file: Option<&Path>, env: Environment) -> Result<Self, ConfigError> {
        let mut env = env
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",");
        for key in LIST_KEYS {
            env = env.with_list_parse_key(key);
        }
        let origins = keys::Origins::new(file, env.collect().unwrap_or_default().keys());
        let mut builder =
            Config::builder().add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml));
        if let Some(path) = file {
            builder = builder.add_source(File::from(path).format(FileFormat::Toml).required(true));
        }
        let settings: Settings = builder
            .add_source(env)
            .build()
            .and_then(Config::try_deserialize)
            .map_err(|err| origins.explain(err))?;
        settings
            .validate()
            .map_err(|refusal| origins.invalid(refusal))?;
        Ok(settings)
    }

    /// The built-in defaults alone, ignoring files and the environment (tests start here).
    pub fn defaults() -> Self {
        // unwrap: the embedded default file is checked by a unit test below.
        Self::load_from(None, Environment::with_prefix("HERMIT_UNUSED_IN_DEFAULTS")).unwrap()
    }

    /// Refuses values that would make the relay misbehave, naming the key.
    pub fn validate(&self) -> Result<(), Refusal> {
        check::settings(self)
    }

    /// The effective settings as TOML, for `check-config`, with secrets masked.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        shown.database.url = mask_url_password(&shown.database.url);
        shown.cluster.redis_url = mask_url_password(&shown.cluster.redis_url);
        if !shown.metrics.token.is_empty() {
            shown.metrics.token = "***".into();
        }
        // unwrap: every field is a plain scalar or list inside a table, which TOML can
        // always express.
        toml::to_string(&shown).unwrap()
    }
}

#[cfg(test)]
mod tests;
