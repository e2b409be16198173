//! The `hermit-relay` command: `serve` (default) and `check-config`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hermit_relay::config::Settings;
use hermit_relay::startup::Application;

/// Relay between Mac terminal apps and web browsers.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML); only the keys it sets override the built-in defaults.
    #[arg(long, short, env = "HERMIT_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay (the default).
    Serve,
    /// Validate the configuration and print the effective settings.
    CheckConfig,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref())?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => {
            print!("{}", settings.to_toml());
            Ok(())
        }
        Command::Serve => serve(settings),
    }
}

fn serve(settings: Settings) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    actix_rt::System::new().block_on(async move {
        let bind = settings.server.bind;
        let app =
            Application::build(settings).with_context(|| format!("cannot listen on {bind}"))?;
        tracing::info!(%bind, port = app.port(), "hermit-relay listening");
        app.run_until_stopped().await?;
        Ok(())
    })
}
