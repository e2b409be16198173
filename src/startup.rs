//! `Application`: builds the whole relay from `Settings`; the seam tests start on port 0.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, Addr, Arbiter};
use actix_http::error::DispatchError;
use actix_http::HttpService;
use actix_rt::net::TcpStream;
use actix_server::{Server, ServerHandle};
use actix_service::{apply_fn_factory, fn_service, map_config, ServiceFactoryExt};
use actix_web::dev::{AppConfig, Service, ServiceRequest, ServiceResponse};
use actix_web::{web, App};
use futures_util::future::Either;
use tokio::io::AsyncWriteExt;

use crate::accounts::refresh::SuccessorKey;
use crate::accounts::Accounts;
use crate::auth::password::HashStats;
use crate::auth::token::{AccessTokens, KeyFileError};
use crate::cluster::{Cluster, ClusterError};
use crate::config::{Live, Settings};
use crate::connections::Connections;
use crate::db::{self, DbError};
use crate::edge::{self, HttpConnections, HttpSlot};
use crate::ids::{Endpoint, Role};
use crate::limits::Limiters;
use crate::metrics::METRICS;
use crate::proxy::ClientAddr;
use crate::relay::account::agent::AgentSocket;
use crate::relay::account::client::ClientSocket;
use crate::relay::account::handoff::Users;
use crate::relay::account::node::AccountNode;
use crate::relay::account::registry::MachineRegistry;
use crate::relay::account::remote::Remote as AccountRemote;
use crate::relay::delivery::StreamLimits;
use crate::relay::handoff::{self, Handoffs, Leaving};
use crate::relay::opening::{first_request, First};
use crate::relay::pairing::code::CodeFormat;
use crate::relay::pairing::handoff::Pairings;
use crate::relay::pairing::homes::Homes;
use crate::relay::pairing::registry::SessionRegistry;
use crate::relay::pairing::remote::Remote;
use crate::relay::pairing::socket::{PairNode, PairSocket};
use crate::relay::pairing::table::PairingRules;
use crate::relay::tunnel::{Home, Starter, Tunnels};
use crate::relay::{self, Relay};
use crate::reload::Reloader;
use crate::routes;
use crate::routes::status::Started;
use crate::transport::{Killable, Linger};
use crate::watch::{self, DatabaseHealth};
use crate::workers::Workers;

/// How long a client has to send its request head after connecting.
const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle keep-alive of plain HTTP connections between requests.
const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The database could not be reached to apply migrations.
    #[error("the database at {at} is unreachable ({reason})")]
    DatabaseUnreachable {
        /// `HOST:PORT`, or the SQLite file.
        at: String,
        /// Why, in the driver's words.
        reason: String,
    },
    /// The database URL is unusable.
    #[error(transparent)]
    Database(#[from] DbError),
    /// Migrations could not be applied.
    #[error("database migrations failed: {0}")]
    Migrations(String),
    /// The biscuit key file could not be read or made.
    #[error(transparent)]
    Key(#[from] KeyFileError),
    /// The cluster settings could not be used.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The audit file could not be opened.
    #[error("cannot open audit.file {path}: {reason}")]
    Audit {
        /// The file.
        path: String,
        /// Why.
        reason: std::io::Error,
    },
}

/// A built relay: bound to its port, not yet serving until awaited.
pub struct Application {
    port: u16,
    server: Server,
    hash_stats: Arc<HashStats>,
    connections: Arc<Connections>,
    reloader: Reloader,
    cluster: Option<Arc<Cluster>>,
    /// In a cluster: hands this node's pairings and users over when it shuts down.
    handoffs: Vec<Arc<dyn Leaving>>,
}

impl Application {
    /// Binds the listener and starts the registry. Must run inside an actix `System`.
    pub fn build(settings: Settings) -> Result<Self, StartError> {
        let live = Live::new(settings);
        let settings = live.snapshot();
        let addr = settings.server.bind;
        let bind_error = |source| StartError::Bind { addr, source };
        let listener = TcpListener::bind(addr).map_err(bind_error)?;
        let port = listener.local_addr().map_err(bind_error)?.port();
        crate::audit::configure(&settings.audit).map_err(|reason| StartError::Audit {
            path: settings.audit.file.display().to_string(),
            reason,
        })?;

        let accounts = web::Data::new(accounts(&settings, live.clone())?);
        for warning in crate::config::check::warnings(&settings) {
            tracing::warn!("{warning}");
        }
        let hash_stats = accounts.passwords.stats();

        let rules = pairing_rules(&settings);
        let streams = StreamLimits {
            hold: settings.pairing.resume_buffer_bytes,
            window: settings.pairing.replay_window_bytes,
        };
        // The server's workers, as they start: where connections run, and the cluster's
        // lanes are written and read.
        let threads = Workers::default();
        let cluster = match settings.cluster.enabled() {
            true => Some(Cluster::start(&settings.cluster, threads.clone())?),
            false => None,
        };
        let homes = cluster
            .as_ref()
            .map(|cluster| Homes::new(Arc::clone(cluster)));
        // Each registry gets a thread of its own, away from the workers' connections.
        let pairing = SessionRegistry::start_in_arbiter(&Arbiter::new().handle(), move |_| {
            SessionRegistry::new(rules, streams).with_homes(homes)
        });
        let grace = settings.pairing.resume_grace();
        let machines = MachineRegistry::start_in_arbiter(&Arbiter::new().handle(), move |_| {
            MachineRegistry::new(streams, grace)
        });
        let connections = Connections::new(settings.limits.max_connections_per_ip);
        let limiters = Arc::new(Limiters::new(&settings.limits).with_cluster(cluster.clone()));
        let client_addr = ClientAddr::new(
            settings.server.trusted_proxies.clone(),
            settings.server.forwarded_header,
        );
        let reloader = Reloader::new(
            live.clone(),
            Arc::clone(&limiters),
            Arc::clone(&connections),
            client_addr.clone(),
        );
        let health = Arc::new(DatabaseHealth::default());
        watch::spawn(
            accounts.pool.clone(),
            machines.clone(),
            live.clone(),
            Arc::clone(&health),
        );
        let handoffs = match &cluster {
            Some(cluster) => {
                let pairings = Pairings {
                    cluster: Arc::clone(cluster),
                    registry: pairing.clone(),
                };
                let users = Users {
                    cluster: Arc::clone(cluster),
                    registry: machines.clone(),
                };
                let pairings = Handoffs::start(Arc::clone(cluster), pairings);
                let users = Handoffs::start(Arc::clone(cluster), users);
                let products: [Option<Arc<dyn Leaving>>; 2] = [
                    pairings.map(|p| p as Arc<dyn Leaving>),
                    users.map(|u| u as Arc<dyn Leaving>),
                ];
                products.into_iter().flatten().collect()
            }
            None => Vec::new(),
        };
        let code_memory = settings.pairing.code_ttl() + settings.pairing.retired_code_memory();
        let tunnels = cluster.as_ref().and_then(|cluster| {
            let home = Home {
                settings: live.clone(),
                connections: Arc::clone(&connections),
                start: virtual_connections(
                    pairing.clone(),
                    machines.clone(),
                    accounts.clone(),
                    Arc::clone(&limiters),
                    code_memory,
                ),
                workers: threads.clone(),
            };
            Tunnels::start(Arc::clone(cluster), home)
        });
        let remote = tunnels
            .clone()
            .map(|tunnels| Remote::new(tunnels, code_memory));
        let account_node = Arc::new(AccountNode {
            registry: machines.clone(),
            accounts: accounts.clone(),
            limiters: Arc::clone(&limiters),
            remote: tunnels.and_then(|tunnels| AccountRemote::start(tunnels, machines.clone())),
        });
        let pair_node = Arc::new(PairNode {
            registry: pairing.clone(),
            limiters: Arc::clone(&limiters),
            remote,
        });
        let relay = web::Data::new(Relay {
            settings: live.clone(),
            pairing,
            machines: machines.clone(),
            connections: Arc::clone(&connections),
            limiters: Arc::clone(&limiters),
            client_addr: client_addr.clone(),
            pair_node,
            account_node,
        });
        let machines = web::Data::new(machines);
        let limiters = web::Data::from(limiters);
        let client_addr = web::Data::new(client_addr);
        let live_data = web::Data::new(live);
        let health = web::Data::new(health);
        let started = web::Data::new(Started(Instant::now()));
        // Registered only in a cluster: `/ready` asks for it as an `Option`.
        let cluster_data = cluster.clone().map(web::Data::from);
        spawn_token_purge(&accounts, settings.auth.token_purge_interval());

        let server = &settings.server;
        let linger = Linger::new(server.linger(), server.linger_bytes, server.max_lingering);
        let http_connections = HttpConnections::new(
            settings.limits.max_http_connections_per_ip,
            (**client_addr).clone(),
        );
        let body_timeout = server.body_timeout();
        let allowed_origins = server.allowed_origins.clone();
        let workers = match server.workers {
            0 => std::thread::available_parallelism().map_or(2, usize::from),
            n => n,
        };
        let server = Server::build()
            .workers(workers)
            .max_concurrent_connections(server.max_connections_per_worker)
            .shutdown_timeout(server.shutdown_timeout_secs)
            // Signals are ours: the WebSockets must hear 1001 before the workers stop.
            .disable_signals()
            .listen("hermit-relay", listener, move || {
                // Runs on each worker's thread as it starts.
                let _slot = threads.register_current();
                let app = App::new()
                    .wrap_fn(routes::limit_body)
                    .wrap_fn(move |mut req, service| {
                        edge::limit_body(&mut req, body_timeout);
                        service.call(req)
                    })
                    .wrap_fn(count_http)
                    // Outermost: preflights are answered before anything else runs.
                    .wrap(edge::cors(&allowed_origins))
                    .app_data(relay.clone())
                    .app_data(accounts.clone())
                    .app_data(machines.clone())
                    .app_data(limiters.clone())
                    .app_data(client_addr.clone())
                    .app_data(live_data.clone())
                    .app_data(health.clone())
                    .app_data(started.clone())
                    .configure(|cfg| {
                        if let Some(cluster) = &cluster_data {
                            cfg.app_data(cluster.clone());
                        }
                    })
                    .configure(routes::routes)
                    .configure(relay::routes)
                    .default_service(web::to(routes::not_found));
                let app = actix_service::IntoServiceFactory::into_factory(app).map_err(
                    |err: actix_web::Error| {
                        actix_http::Response::<actix_http::body::BoxBody>::from(
                            err.error_response(),
                        )
                    },
                );
                // Requests asking to upgrade go here instead of to the App: a WebSocket
                // leaves the HTTP dispatcher at once (see `relay::upgrade`).
                let upgrade = {
                    let relay = relay.clone();
                    fn_service(
                        move |(req, conn): (actix_http::Request, relay::UpgradeConn)| {
                            relay::upgrade(relay.clone(), req, conn)
                        },
                    )
                };
                let http = HttpService::<Killable<TcpStream>, _, _, _, _>::build()
                    .keep_alive(KEEP_ALIVE)
                    .client_request_timeout(CLIENT_REQUEST_TIMEOUT)
                    .on_connect_ext(|io: &Killable<TcpStream>, data| {
                        data.insert(io.switch());
                        if let Some(slot) = io.guard::<HttpSlot>() {
                            data.insert(slot);
                        }
                    })
                    .upgrade(upgrade)
                    .h1(map_config(app, |_| AppConfig::default()));
                let linger = linger.clone();
                let http_connections = Arc::clone(&http_connections);
                let relay = relay.clone();
                fn_service(move |io: TcpStream| {
                    let linger = linger.clone();
                    let http_connections = Arc::clone(&http_connections);
                    let relay = relay.clone();
                    async move {
                        let deadline = Instant::now() + CLIENT_REQUEST_TIMEOUT;
                        let _ = io.set_nodelay(true);
                        let peer = io.peer_addr().ok();
                        let admitted = peer.map(|peer| http_connections.admit(peer.ip()));
                        let mut io = Killable::new(io).lingering(linger);
                        match admitted {
                            Some(Err(refused)) => {
                                // Too many from this peer: say so and close, lingering.
                                let written = io.write_all(edge::TOO_MANY_CONNECTIONS).await;
                                let err = written
                                    .err()
                                    .unwrap_or_else(|| std::io::Error::other(refused.to_string()));
                                return Err(DispatchError::Io(err));
                            }
                            Some(Ok(Some(slot))) => io = io.holding(Arc::new(slot)),
                            Some(Ok(None)) | None => {}
                        }
                        // A plain WebSocket upgrade is served without the HTTP layer.
                        Ok(match first_request(&relay, io, peer, deadline).await {
                            First::Done => None,
                            First::Http(io) => Some((io, peer)),
                        })
                    }
                })
                .and_then(apply_fn_factory(
                    http,
                    |first: Option<(Killable<TcpStream>, _)>, http: &_| match first {
                        Some(conn) => Either::Left(Service::call(http, conn)),
                        None => Either::Right(std::future::ready(Ok(()))),
                    },
                ))
            })
            .map_err(bind_error)?
            .run();
        Ok(Self {
            port,
            server,
            hash_stats,
            connections,
            reloader,
            cluster,
            handoffs,
        })
    }

    /// The reloader of this relay: `SIGHUP` calls it; tests may too. Set the file it
    /// re-reads (the one `--config` named) and the logger it adjusts here.
    pub fn reloader(&mut self) -> &mut Reloader {
        &mut self.reloader
    }

    /// Serves until SIGTERM or SIGINT, then shuts down gracefully: no new connections,
    /// every WebSocket gets a close frame (1001, going away), in-flight HTTP requests get up
    /// to `server.shutdown_timeout_secs` to finish; then a cluster node leaves its cluster.
    ///
    /// `SIGHUP` reloads the configuration (see [`crate::reload`]).
    pub async fn run_until_signalled(self) -> std::io::Result<()> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let reloader = self.reloader.clone();
            if let Ok(mut hangups) = signal(SignalKind::hangup()) {
                actix_rt::spawn(async move {
                    while hangups.recv().await.is_some() {
                        tracing::info!(signal = "SIGHUP", "reloading the configuration");
                        reloader.reload_and_log();
                    }
                });
            }
        }
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `stop` resolves (to the name of what stopped it), then shuts down
    /// gracefully as [`Self::run_until_signalled`] does. Tests stop a node this way.
    pub async fn run_until(
        self,
        stop: impl std::future::Future<Output = &'static str> + 'static,
    ) -> std::io::Result<()> {
        let handle = self.server.handle();
        let connections = Arc::clone(&self.connections);
        let handoffs = self.handoffs.clone();
        let cluster = self.cluster.clone();
        actix_rt::spawn(async move {
            let signal = stop.await;
            tracing::info!(signal, "shutting down");
            match cluster {
                Some(cluster) => {
                    handoff::leave(&cluster, &connections, &handoffs).await;
                    // The lanes' writers run on the workers, which stop next: they finish
                    // first, each with its goodbye.
                    cluster.close_lanes().await;
                }
                None => connections.close_all(),
            }
            handle.stop(true).await;
        });
        let served = self.server.await;
        if let Some(cluster) = &self.cluster {
            cluster.leave().await;
        }
        crate::audit::flush();
        served
    }

    /// Password hashing counters (tests check the concurrency bound with them).
    pub fn hash_stats(&self) -> Arc<HashStats> {
        Arc::clone(&self.hash_stats)
    }

    /// The port actually bound (useful with port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A handle to stop the server from elsewhere.
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// This node's cluster, when `cluster.redis_url` is set.
    pub fn cluster(&self) -> Option<Arc<Cluster>> {
        self.cluster.clone()
    }

    /// Serves until the server is stopped (by a handle). A cluster node then stops at once,
    /// telling no one, as if it had crashed: the others see its heartbeat expire.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let served = self.server.await;
        if let Some(cluster) = &self.cluster {
            cluster.halt();
        }
        served
    }
}

/// Opens the pool, applies migrations if configured, loads the token key, and starts
/// watching the database.
fn accounts(settings: &Settings, live: Live) -> Result<Accounts, StartError> {
    let database = &settings.database;
    let pool = db::Pool::new(database)?;
    if database.run_migrations {
        migrate(&pool)?;
    }
    let auth = &settings.auth;
    let tokens = AccessTokens::load_or_create(&auth.private_key_file, auth.access_token_ttl())?
        .with_accepted_keys(
            auth.accepted_public_keys
                .iter()
                .filter_map(|key| crate::auth::token::parse_public_key(key)),
        )
        .with_device_ttl(auth.device_token_ttl());
    let successors = SuccessorKey::from_key_file(&auth.private_key_file)?;
    pool.watch();
    Ok(Accounts::new(pool, Arc::new(tokens), successors, live))
}

/// Applies pending migrations now (also `hermit-relay migrate`); returns what was applied.
/// Uses a connection of its own, so an unreachable database is reported with its reason.
pub fn migrate(pool: &db::Pool) -> Result<Vec<String>, StartError> {
    let mut conn = pool.open().map_err(|err| match err {
        DbError::Connect { at, reason } => StartError::DatabaseUnreachable { at, reason },
        other => StartError::Database(other),
    })?;
    let applied = db::run_migrations(&mut conn).map_err(|err| {
        StartError::Migrations(err.to_string().lines().next().unwrap_or("").to_owned())
    })?;
    for version in &applied {
        tracing::info!(%version, "applied migration");
    }
    Ok(applied)
}

/// Deletes expired and revoked refresh tokens every `every`, so the table does not grow by
/// a row per login forever. Spent tokens stay until they expire: presenting one again is
/// how a stolen token is detected.
fn spawn_token_purge(accounts: &web::Data<Accounts>, every: Duration) {
    let pool = accounts.pool.clone();
    actix_rt::spawn(async move {
        let mut ticks = actix_rt::time::interval(every);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let purged = db::run(&pool, |conn| {
                Ok(crate::models::refresh_token::delete_dead(
                    conn,
                    crate::models::now(),
                )?)
            })
            .await;
            match purged {
                Ok(0) => {}
                Ok(rows) => tracing::info!(rows, "purged expired and revoked refresh tokens"),
                Err(err) => tracing::warn!(%err, "could not purge refresh tokens"),
            }
        }
    });
}

/// Waits for SIGTERM or SIGINT; returns its name.
async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

/// Middleware: counts every response by route pattern and status, timing all but
/// WebSocket upgrades (whose "response" lasts as long as the socket).
fn count_http<S>(
    req: ServiceRequest,
    service: &S,
) -> impl std::future::Future<Output = Result<ServiceResponse, actix_web::Error>>
where
    S: Service<ServiceRequest, Response = ServiceResponse, Error = actix_web::Error>,
{
    let started = Instant::now();
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = service.call(req);
    async move {
        let response = response.await?;
        let websocket = Endpoint::from_route(&route).is_some()
            && response.status() == actix_web::http::StatusCode::SWITCHING_PROTOCOLS;
        let elapsed = (!websocket).then(|| started.elapsed());
        METRICS.http(&route, response.status().as_u16(), elapsed);
        Ok(response)
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

/// What a tunnel from another node starts here (see `relay::tunnel`): the connection actor
/// of its endpoint, as a virtual connection that never tunnels further.
fn virtual_connections(
    pairing: Addr<SessionRegistry>,
    machines: Addr<MachineRegistry>,
    accounts: web::Data<Accounts>,
    limiters: Arc<Limiters>,
    code_memory: Duration,
) -> Starter {
    let relayed = std::sync::OnceLock::<Arc<PairNode>>::new();
    let accounts_relayed = std::sync::OnceLock::<Arc<AccountNode>>::new();
    Arc::new(move |endpoint, opened, tunnels: &Tunnels| {
        let limiters = Arc::clone(&limiters);
        match endpoint {
            Endpoint::Mac | Endpoint::Browser => {
                let role = match endpoint {
                    Endpoint::Mac => Role::Mac,
                    _ => Role::Browser,
                };
                // One for every virtual pairing connection of this node.
                let node = relayed.get_or_init(|| {
                    Arc::new(PairNode {
                        registry: pairing.clone(),
                        limiters,
                        remote: Some(Remote::new(tunnels.clone(), code_memory)),
                    })
                });
                PairSocket::start_relayed(role, opened, Arc::clone(node));
            }
            Endpoint::Agent | Endpoint::Client => {
                // One for every virtual account connection of this node (they never tunnel).
                let node = accounts_relayed.get_or_init(|| {
                    Arc::new(AccountNode {
                        registry: machines.clone(),
                        accounts: accounts.clone(),
                        limiters,
                        remote: None,
                    })
                });
                match endpoint {
                    Endpoint::Agent => drop(AgentSocket::start_relayed(opened, Arc::clone(node))),
                    _ => drop(ClientSocket::start_relayed(opened, Arc::clone(node))),
                }
            }
        }
    })
}
