//! `Application`: builds the whole relay from `Settings`; the seam tests start on port 0.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Arbiter};
use actix_http::HttpService;
use actix_rt::net::TcpStream;
use actix_server::{Server, ServerHandle};
use actix_service::{fn_service, map_config, ServiceFactoryExt};
use actix_web::dev::AppConfig;
use actix_web::{web, App};

use crate::config::Settings;
use crate::relay::code::CodeFormat;
use crate::relay::registry::pairings::PairingRules;
use crate::relay::registry::SessionRegistry;
use crate::relay::{self, RelayState};
use crate::routes;
use crate::transport::Killable;

/// How long a client has to send its request head after connecting.
const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle keep-alive of plain HTTP connections between requests.
const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// A built relay: bound to its port, not yet serving until awaited.
pub struct Application {
    port: u16,
    server: Server,
}

impl Application {
    /// Binds the listener and starts the registry. Must run inside an actix `System`.
    pub fn build(settings: Settings) -> std::io::Result<Self> {
        let settings = Arc::new(settings);
        let listener = TcpListener::bind(settings.server.bind)?;
        let port = listener.local_addr()?.port();

        let rules = pairing_rules(&settings);
        // The registry gets a thread of its own, away from the workers' connections.
        let registry = SessionRegistry::start_in_arbiter(&Arbiter::new().handle(), move |_| {
            SessionRegistry::new(rules)
        });
        let state = RelayState {
            settings: Arc::clone(&settings),
            registry,
        };

        let server = &settings.server;
        let workers = match server.workers {
            0 => std::thread::available_parallelism().map_or(2, usize::from),
            n => n,
        };
        let server = Server::build()
            .workers(workers)
            .max_concurrent_connections(server.max_connections_per_worker)
            .shutdown_timeout(server.shutdown_timeout_secs)
            .listen("hermit-relay", listener, move || {
                let state = state.clone();
                let app = App::new()
                    .app_data(web::Data::new(state))
                    .configure(routes::routes)
                    .configure(relay::routes);
                let app = actix_service::IntoServiceFactory::into_factory(app).map_err(
                    |err: actix_web::Error| {
                        actix_http::Response::<actix_http::body::BoxBody>::from(
                            err.error_response(),
                        )
                    },
                );
                let http = HttpService::<Killable<TcpStream>, _, _, _, _>::build()
                    .keep_alive(KEEP_ALIVE)
                    .client_request_timeout(CLIENT_REQUEST_TIMEOUT)
                    .on_connect_ext(|io: &Killable<TcpStream>, data| {
                        data.insert(io.switch());
                    })
                    .h1(map_config(app, |_| AppConfig::default()));
                fn_service(|io: TcpStream| async move {
                    let _ = io.set_nodelay(true);
                    let peer = io.peer_addr().ok();
                    Ok::<_, actix_http::error::DispatchError>((Killable::new(io), peer))
                })
                .and_then(http)
            })?
            .run();
        Ok(Self { port, server })
    }

    /// The port actually bound (useful with port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A handle to stop the server from elsewhere.
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until the server is stopped (by a signal or a handle).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

fn pairing_rules(settings: &Settings) -> PairingRules {
    let pairing = &settings.pairing;
    PairingRules {
        format: CodeFormat::new(&pairing.code_alphabet, pairing.code_length),
        code_ttl: pairing.code_ttl(),
        resume_grace: pairing.resume_grace(),
        retired_code_memory: pairing.retired_code_memory(),
        max_pending_codes: settings.limits.max_pending_codes,
    }
}
