//! The relay proper: wire protocol, pairing codes, the `SessionRegistry` and the
//! per-connection actors (`/mac`, `/browser`, `/ws/agent`, `/ws/client`), plus the HTTP
//! handlers that upgrade to them.

pub mod agent_socket;
pub mod client_socket;
pub mod code;
pub mod pair_socket;
pub mod protocol;
pub mod registry;
pub mod socket;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::Addr;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::accounts::Accounts;
use crate::config::Settings;
use crate::connections::{Admission, Connections, Refused};
use crate::error::ApiError;
use crate::limits::Limiters;
use crate::proxy::ClientAddr;
use crate::transport::InboundStream;
use agent_socket::AgentSocket;
use client_socket::ClientSocket;
use pair_socket::PairSocket;
use registry::pairings::{ConnId, Role};
use registry::SessionRegistry;
use socket::{Endpoint, Socket};

/// What a connection actor starts from: its admitted, upgraded socket and the shared state.
pub struct Opened {
    /// The socket (admission, outbox, kill switch).
    pub socket: Socket,
    /// What the peer sends.
    pub inbound: InboundStream,
    /// The registry.
    pub registry: Addr<SessionRegistry>,
    /// The effective settings.
    pub settings: Arc<Settings>,
    /// Attempt limiters.
    pub limiters: Arc<Limiters>,
}

/// What the WebSocket handlers need, shared by every worker.
#[derive(Clone)]
pub struct RelayState {
    /// The effective settings.
    pub settings: Arc<Settings>,
    /// The one registry of this process.
    pub registry: Addr<SessionRegistry>,
    /// Open connections: per-address limit and shutdown.
    pub connections: Arc<Connections>,
    /// Attempt limiters.
    pub limiters: Arc<Limiters>,
    /// Client addresses through trusted proxies.
    pub client_addr: ClientAddr,
}

impl RelayState {
    /// The client address of a request.
    pub fn client_ip(&self, req: &HttpRequest) -> IpAddr {
        self.client_addr.of(req)
    }

    /// Checks the origin and the per-address limit before a WebSocket upgrade.
    fn admit(&self, req: &HttpRequest, endpoint: Endpoint) -> Result<Admission, ApiError> {
        if endpoint.browser_facing() && !self.settings.server.allowed_origins.is_empty() {
            if let Some(origin) = req.headers().get(header::ORIGIN) {
                let allowed = origin.to_str().is_ok_and(|origin| {
                    self.settings
                        .server
                        .allowed_origins
                        .iter()
                        .any(|allowed| allowed.eq_ignore_ascii_case(origin))
                });
                if !allowed {
                    return Err(ApiError::OriginNotAllowed);
                }
            }
        }
        self.connections
            .admit(self.client_ip(req), endpoint)
            .map_err(|refused| match refused {
                Refused::TooMany => ApiError::RateLimited,
                Refused::ShuttingDown => ApiError::Unavailable("the relay is shutting down"),
            })
    }
}

/// A fresh connection id, unique for the life of the process.
pub fn next_conn_id() -> ConnId {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Registers the pairing endpoints.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/mac", web::get().to(mac))
        .route("/browser", web::get().to(browser))
        .route("/ws/agent", web::get().to(agent))
        .route("/ws/client", web::get().to(client));
}

async fn agent(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<RelayState>,
    accounts: web::Data<Accounts>,
) -> actix_web::Result<HttpResponse> {
    let (response, opened) = open(&req, payload, &state, Endpoint::Agent)?;
    AgentSocket::start(opened, accounts);
    Ok(response)
}

async fn client(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<RelayState>,
    accounts: web::Data<Accounts>,
) -> actix_web::Result<HttpResponse> {
    let (response, opened) = open(&req, payload, &state, Endpoint::Client)?;
    ClientSocket::start(opened, accounts);
    Ok(response)
}

/// Admits and upgrades a connection: the 101 response, and what its actor starts from.
fn open(
    req: &HttpRequest,
    payload: web::Payload,
    state: &RelayState,
    endpoint: Endpoint,
) -> actix_web::Result<(HttpResponse, Opened)> {
    let admission = state.admit(req, endpoint)?;
    let limits = &state.settings.limits;
    let (response, link, inbound) = crate::transport::upgrade(
        req,
        payload,
        limits.max_message_bytes,
        limits.max_outbound_bytes,
    )?;
    let opened = Opened {
        socket: Socket::new(admission, link),
        inbound,
        registry: state.registry.clone(),
        settings: Arc::clone(&state.settings),
        limiters: Arc::clone(&state.limiters),
    };
    Ok((response, opened))
}

async fn mac(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<RelayState>,
) -> actix_web::Result<HttpResponse> {
    open_pair_socket(Role::Mac, &req, payload, &state)
}

async fn browser(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<RelayState>,
) -> actix_web::Result<HttpResponse> {
    open_pair_socket(Role::Browser, &req, payload, &state)
}

fn open_pair_socket(
    role: Role,
    req: &HttpRequest,
    payload: web::Payload,
    state: &RelayState,
) -> actix_web::Result<HttpResponse> {
    let endpoint = match role {
        Role::Mac => Endpoint::Mac,
        Role::Browser => Endpoint::Browser,
    };
    let (response, opened) = open(req, payload, state, endpoint)?;
    PairSocket::start(role, opened);
    Ok(response)
}
