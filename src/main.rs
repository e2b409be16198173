//! The `hermit-relay` command: `serve` (default) and `check-config`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hermit_relay::auth::token::public_key_of;
use hermit_relay::config::{LogFormat, LogSettings, Settings};
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
    /// Validate the configuration and print the effective settings (secrets masked) and
    /// the access-token public key.
    CheckConfig,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Exit 0 if the relay at `server.bind` answers `GET /health` (container health check).
    Healthcheck,
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref())?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => {
            print!("{}", settings.to_toml());
            let key_file = &settings.auth.private_key_file;
            match public_key_of(key_file)? {
                Some(key) => println!("# access-token public key: {key}"),
                None => println!(
                    "# access-token key {} does not exist yet; it is generated on first start",
                    key_file.display()
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Healthcheck => healthcheck(settings.server.bind).map(|()| ExitCode::SUCCESS),
        Command::Migrate => {
            init_logging(&settings.log);
            Ok(logged(migrate(&settings)))
        }
        Command::Serve => {
            init_logging(&settings.log);
            Ok(logged(serve(settings)))
        }
    }
}

/// Writes a fatal error once, as a log line in the configured format (JSON included), and
/// turns it into the exit status. The error's own text leads: it names what failed.
fn logged(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            ExitCode::FAILURE
        }
    }
}

fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let pool = hermit_relay::db::Pool::new(&settings.database)?;
    let applied = hermit_relay::startup::migrate(&pool)?;
    println!("{} migration(s) applied", applied.len());
    Ok(())
}

fn init_logging(log: &LogSettings) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&log.level));
    // Colours only for a person at a terminal, never in files, `docker logs` or journald.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    match log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn serve(settings: Settings) -> anyhow::Result<()> {
    actix_rt::System::new().block_on(async move {
        let bind = settings.server.bind;
        // Its errors name what failed: the listen address, the database, the key file.
        let app = Application::build(settings)?;
        tracing::info!(%bind, port = app.port(), "hermit-relay listening");
        app.run_until_signalled().await?;
        Ok(())
    })
}

/// A dependency-free `GET /health` against the configured port on loopback.
fn healthcheck(bind: std::net::SocketAddr) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    use std::time::Duration;
    let target = match bind.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => {
            std::net::SocketAddr::from(([127, 0, 0, 1], bind.port()))
        }
        ip if ip.is_unspecified() => {
            std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, bind.port()))
        }
        _ => bind,
    };
    let timeout = Duration::from_secs(2);
    let mut stream = std::net::TcpStream::connect_timeout(&target, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    anyhow::ensure!(
        answer.starts_with("HTTP/1.1 200"),
        "unhealthy: {}",
        answer.lines().next().unwrap_or("")
    );
    Ok(())
}
