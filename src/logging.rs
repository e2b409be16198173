//! Logging: `tracing` lines to standard output (the relay) or standard error (the admin
//! commands, whose standard output is their answer), with a level and a format that a
//! reload can change in place.
//!
//! Audit events (target `audit`) stay on at `info` whatever `log.level` says, unless the
//! filter names the `audit` target itself: a quieter log must not lose the audit trail.

use std::io::IsTerminal;

use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::config::{LogFormat, LogSettings};

type Output = Box<dyn Layer<Registry> + Send + Sync>;
type WithOutput = Layered<reload::Layer<Output, Registry>, Registry>;

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The relay's logs.
    Stdout,
    /// The admin commands' logs (their answers go to standard output).
    Stderr,
}

/// Changes the level and format of the installed logger.
#[derive(Clone)]
pub struct LogHandle {
    filter: reload::Handle<EnvFilter, WithOutput>,
    output: reload::Handle<Output, Registry>,
    stream: Stream,
    /// `RUST_LOG` was set at start: it decides the filter, `log.level` does not.
    from_env: bool,
}

impl std::fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogHandle")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

/// Installs the process's logger; `None` if one is installed already (tests).
pub fn init(log: &LogSettings, stream: Stream) -> Option<LogHandle> {
    let from_env = std::env::var_os("RUST_LOG").is_some();
    let env_filter = match from_env {
        true => EnvFilter::try_from_default_env().unwrap_or_else(|_| filter(&log.level)),
        false => filter(&log.level),
    };
    let (output, output_handle) = reload::Layer::new(output(log.format, stream));
    let (env_filter, filter_handle) = reload::Layer::new(env_filter);
    Registry::default()
        .with(output)
        .with(env_filter)
        .try_init()
        .ok()?;
    Some(LogHandle {
        filter: filter_handle,
        output: output_handle,
        stream,
        from_env,
    })
}

impl LogHandle {
    /// Applies a new level and format to every line logged from now on.
    pub fn apply(&self, log: &LogSettings) -> Result<(), String> {
        if !self.from_env {
            self.filter
                .reload(filter(&log.level))
                .map_err(|err| err.to_string())?;
        }
        self.output
            .reload(output(log.format, self.stream))
            .map_err(|err| err.to_string())
    }
}

/// `level` (checked by `config::check`), with audit events kept at `info`.
fn filter(level: &str) -> EnvFilter {
    let level = crate::config::check::normalise_filter(level);
    let directives = if level.contains("audit") {
        level
    } else {
        format!("{level},audit=info")
    };
    EnvFilter::try_new(directives).unwrap_or_else(|_| EnvFilter::new("info"))
}

fn output(format: LogFormat, stream: Stream) -> Output {
    // Colours only for a person at a terminal, never in files, `docker logs` or journald.
    let ansi = match stream {
        Stream::Stdout => std::io::stdout().is_terminal(),
        Stream::Stderr => std::io::stderr().is_terminal(),
    };
    let layer = tracing_subscriber::fmt::layer().with_ansi(ansi);
    match (format, stream) {
        (LogFormat::Text, Stream::Stdout) => layer.with_writer(std::io::stdout).boxed(),
        (LogFormat::Text, Stream::Stderr) => layer.with_writer(std::io::stderr).boxed(),
        (LogFormat::Json, Stream::Stdout) => layer
            .json()
            .flatten_event(true)
            .with_writer(std::io::stdout)
            .boxed(),
        (LogFormat::Json, Stream::Stderr) => layer
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .boxed(),
    }
}
