//! The `hermit-relay` command: `serve` (default), `check-config`, `migrate`, `healthcheck`,
//! and the admin commands (`users`, `machines`, `sessions`), whose logic is
//! `hermit_relay::admin`.
//!
//! Errors are printed once, as one line on standard error (`error: …`), and the process
//! exits 1; usage errors exit 2.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use hermit_relay::admin::{output, password, Admin, AdminError};
use hermit_relay::auth::token::public_key_of;
use hermit_relay::config::{check, keys, Settings};
use hermit_relay::logging::{self, Stream};
use hermit_relay::startup::Application;

/// Relay between Mac terminal apps and web browsers.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML); only the keys it sets override the built-in defaults.
    #[arg(long, short, env = "HERMIT_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Admin commands: answer in JSON (one line) rather than a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay (the default). SIGHUP reloads the configuration.
    Serve,
    /// Validate the configuration and print the effective settings (secrets masked), which
    /// keys a running relay reloads on SIGHUP, and the access-token public key.
    CheckConfig,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Exit 0 if the relay at `server.bind` answers `GET /health` (container health check).
    Healthcheck,
    /// Accounts: list, add, disable, enable, delete, set a password.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Machines (Macs with an agent): list, revoke.
    #[command(subcommand)]
    Machines(MachinesCommand),
    /// Sign-in sessions (refresh tokens).
    #[command(subcommand)]
    Sessions(SessionsCommand),
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Every user, with its status and number of machines.
    List,
    /// Create a user (whatever auth.registration says). The password is read from the
    /// terminal without echo, or from standard input when it is not a terminal.
    Add(Email),
    /// Refuse a user's sign-in, refresh, API calls and sockets; revoke its sessions.
    Disable(Email),
    /// Let a disabled user sign in again.
    Enable(Email),
    /// Delete a user with its machines and sessions.
    Delete(Email),
    /// Set a user's password (read like `add`'s) and revoke its sessions.
    SetPassword(Email),
}

#[derive(Args)]
struct Email {
    /// The user's email.
    email: String,
}

#[derive(Subcommand)]
enum MachinesCommand {
    /// Every machine, or one user's.
    List {
        /// Only this user's machines.
        #[arg(long)]
        user: Option<String>,
    },
    /// Delete a machine: its token stops working and its agent is dropped.
    Revoke {
        /// The machine's id (see `machines list`).
        id: String,
    },
}

#[derive(Subcommand)]
enum SessionsCommand {
    /// Revoke every refresh token of a user: it must sign in again once its access
    /// tokens expire.
    Revoke {
        /// The user's email.
        #[arg(long)]
        user: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.is::<Logged>() => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("error: {}", one_line(&*err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each cause only if the text so far does not already say it
/// (so "cannot listen on X: address in use" is not followed by "address in use" again).
fn one_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = cause.source();
    }
    text
}

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

fn run(cli: Cli) -> Result {
    let settings = Settings::load(cli.config.as_deref())?;
    let unknown_vars =
        keys::unknown_env_vars(std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()));
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => {
            for warning in unknown_vars.iter().chain(&check::warnings(&settings)) {
                eprintln!("warning: {warning}");
            }
            check_config(&settings)
        }
        Command::Healthcheck => healthcheck(settings.server.bind),
        Command::Migrate => {
            logging::init(&settings.log, Stream::Stdout);
            logged(migrate(&settings))
        }
        Command::Serve => {
            let log = logging::init(&settings.log, Stream::Stdout);
            for warning in unknown_vars.iter().chain(&check::warnings(&settings)) {
                tracing::warn!("{warning}");
            }
            logged(serve(settings, cli.config, log))
        }
        Command::Users(command) => admin(&settings, &unknown_vars, |admin| {
            users(admin, command, cli.json)
        }),
        Command::Machines(command) => admin(&settings, &unknown_vars, |admin| {
            machines(admin, command, cli.json)
        }),
        Command::Sessions(SessionsCommand::Revoke { user }) => {
            admin(&settings, &unknown_vars, |admin| {
                let (user, revoked) = admin.revoke_sessions(&user)?;
                Ok(match cli.json {
                    true => {
                        output::json(&serde_json::json!({"user": user, "revokedSessions": revoked}))
                    }
                    false => format!("{}: {revoked} session(s) revoked\n", user.email),
                })
            })
        }
    }
}

/// Writes a fatal error of the relay once, as a log line in the configured format (JSON
/// included), and exits 1. The error's own text leads: it names what failed.
fn logged(result: Result) -> Result {
    match result {
        Ok(()) => Ok(()),
        Err(err) => {
            tracing::error!("{}", one_line(&*err));
            Err(Logged.into())
        }
    }
}

/// An error already written to the log: `main` only sets the exit status.
#[derive(Debug)]
struct Logged;

impl std::fmt::Display for Logged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("(logged)")
    }
}

impl std::error::Error for Logged {}

fn migrate(settings: &Settings) -> Result {
    let pool = hermit_relay::db::Pool::new(&settings.database)?;
    let applied = hermit_relay::startup::migrate(&pool)?;
    emit(&format!("{} migration(s) applied\n", applied.len()))
}

fn check_config(settings: &Settings) -> Result {
    let mut text = settings.to_toml();
    let (live, restart): (Vec<String>, Vec<String>) = keys::flatten(settings)
        .into_keys()
        .partition(|key| keys::is_live(key));
    text.push_str("\n# Reloaded live on SIGHUP (for new connections and requests):\n");
    for key in live {
        text.push_str(&format!("#   {key}\n"));
    }
    text.push_str("# Need a restart:\n");
    for key in restart {
        text.push_str(&format!("#   {key}\n"));
    }
    let key_file = &settings.auth.private_key_file;
    text.push_str(&match public_key_of(key_file)? {
        Some(key) => format!("# access-token public key: {key}\n"),
        None => format!(
            "# access-token key {} does not exist yet; it is generated on first start\n",
            key_file.display()
        ),
    });
    emit(&text)
}

/// Writes a command's answer to standard output. A reader that went away (`| head -1`)
/// ends the command quietly: it wanted no more, which is no failure of ours (`print!`
/// would panic on the broken pipe).
fn emit(text: &str) -> Result {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => Err(err.into()),
        _ => Ok(()),
    }
}

/// Runs an admin command: its logs and audit events (`audit.target = "log"`) go to
/// standard error, its answer to standard output.
fn admin(
    settings: &Settings,
    unknown_vars: &[String],
    command: impl FnOnce(&Admin) -> std::result::Result<String, AdminError>,
) -> Result {
    logging::init(&settings.log, Stream::Stderr);
    for warning in unknown_vars {
        tracing::warn!("{warning}");
    }
    hermit_relay::audit::configure(&settings.audit).map_err(|err| {
        format!(
            "cannot open audit.file {}: {err}",
            settings.audit.file.display()
        )
    })?;
    let answer = Admin::connect(settings).and_then(|admin| command(&admin));
    hermit_relay::audit::flush();
    emit(&answer?)
}

fn users(
    admin: &Admin,
    command: UsersCommand,
    json: bool,
) -> std::result::Result<String, AdminError> {
    let user = |row: &hermit_relay::admin::UserRow, done: &str| match json {
        true => output::json(&serde_json::json!({ "user": row })),
        false => format!("{done} {} ({})\n", row.email, row.id),
    };
    Ok(match command {
        UsersCommand::List => {
            let rows = admin.users()?;
            match json {
                true => output::json(&rows),
                false => output::users(&rows),
            }
        }
        UsersCommand::Add(Email { email }) => {
            let secret = password::read("Password").map_err(AdminError::Invalid)?;
            user(&admin.add_user(&email, &secret)?, "added")
        }
        UsersCommand::Disable(Email { email }) => user(&admin.disable_user(&email)?.0, "disabled"),
        UsersCommand::Enable(Email { email }) => user(&admin.enable_user(&email)?, "enabled"),
        UsersCommand::Delete(Email { email }) => user(&admin.delete_user(&email)?, "deleted"),
        UsersCommand::SetPassword(Email { email }) => {
            let secret = password::read("New password").map_err(AdminError::Invalid)?;
            let (row, revoked) = admin.set_password(&email, &secret)?;
            match json {
                true => output::json(&serde_json::json!({"user": row, "revokedSessions": revoked})),
                false => format!(
                    "password set for {} ({revoked} session(s) revoked)\n",
                    row.email
                ),
            }
        }
    })
}

fn machines(
    admin: &Admin,
    command: MachinesCommand,
    json: bool,
) -> std::result::Result<String, AdminError> {
    Ok(match command {
        MachinesCommand::List { user } => {
            let rows = admin.machines(user.as_deref())?;
            match json {
                true => output::json(&rows),
                false => output::machines(&rows),
            }
        }
        MachinesCommand::Revoke { id } => {
            let row = admin.revoke_machine(&id)?;
            match json {
                true => output::json(&serde_json::json!({ "machine": row })),
                false => format!("revoked {} ({}, of {})\n", row.id, row.name, row.email),
            }
        }
    })
}

fn serve(settings: Settings, file: Option<PathBuf>, log: Option<logging::LogHandle>) -> Result {
    actix_rt::System::new().block_on(async move {
        let bind = settings.server.bind;
        let mut app = Application::build(settings)?;
        let reloader = app.reloader();
        *reloader = reloader.clone().with_file(file).with_log(log);
        tracing::info!(%bind, port = app.port(), "hermit-relay listening");
        app.run_until_signalled().await?;
        Ok(())
    })
}

/// A dependency-free `GET /health` against the configured port on loopback.
fn healthcheck(bind: std::net::SocketAddr) -> Result {
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
    if !answer.starts_with("HTTP/1.1 200") {
        return Err(format!("unhealthy: {}", answer.lines().next().unwrap_or("")).into());
    }
    Ok(())
}
