//! The relay proper: the wire protocol, the two products — quick pairing ([`pairing`]) and
//! accounts ([`account`]), each with its registry actor and connection protocols — the
//! socket skeleton and delivery policy they share, and the HTTP handlers that upgrade a
//! request to one of the four WebSocket endpoints.
//!
//! Dependencies point one way: the products use [`protocol`], [`socket`] and
//! [`delivery`]; neither product uses the other; only this file knows both.

pub mod account;
pub mod deadlines;
pub mod delivery;
pub mod pairing;
pub mod protocol;
pub mod socket;

use std::sync::Arc;

use actix::Addr;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::accounts::Accounts;
use crate::config::Live;
use crate::connections::{Admission, Connections, Refused};
use crate::error::ApiError;
use crate::ids::{Endpoint, Role};
use crate::limits::Limiters;
use crate::proxy::ClientAddr;
use account::agent::AgentSocket;
use account::client::ClientSocket;
use account::registry::MachineRegistry;
use pairing::registry::SessionRegistry;
use pairing::socket::PairSocket;
use socket::{Opened, Socket};

/// What the WebSocket upgrade handlers need, shared by every worker.
#[derive(Clone)]
pub struct Relay {
    /// The running settings: a new connection keeps the version it was opened under.
    pub settings: Live,
    /// The quick-pairing registry.
    pub pairing: Addr<SessionRegistry>,
    /// The account-mode registry.
    pub machines: Addr<MachineRegistry>,
    /// Open connections: per-address limit and shutdown.
    pub connections: Arc<Connections>,
    /// Attempt limiters.
    pub limiters: Arc<Limiters>,
    /// Client addresses through trusted proxies.
    pub client_addr: ClientAddr,
}

impl Relay {
    /// Checks the origin and the per-address limit before a WebSocket upgrade.
    fn admit(&self, req: &HttpRequest, endpoint: Endpoint) -> Result<Admission, ApiError> {
        let settings = self.settings.get();
        let allowed_origins = &settings.server.allowed_origins;
        if endpoint.browser_facing() && !allowed_origins.is_empty() {
            if let Some(origin) = req.headers().get(header::ORIGIN) {
                let allowed = origin.to_str().is_ok_and(|origin| {
                    allowed_origins
                        .iter()
                        .any(|allowed| allowed.eq_ignore_ascii_case(origin))
                });
                if !allowed {
                    return Err(ApiError::OriginNotAllowed);
                }
            }
        }
        self.connections
            .admit(self.client_addr.of(req), endpoint)
            .map_err(|refused| match refused {
                Refused::TooMany => ApiError::RateLimited,
                Refused::ShuttingDown => ApiError::Unavailable("the relay is shutting down"),
            })
    }

    /// Admits and upgrades a connection: the 101 response, and what its actor starts from.
    fn open(
        &self,
        req: &HttpRequest,
        payload: web::Payload,
        endpoint: Endpoint,
    ) -> actix_web::Result<(HttpResponse, Opened)> {
        let admission = self.admit(req, endpoint)?;
        let settings = self.settings.snapshot();
        let limits = &settings.limits;
        let (response, link, inbound) = crate::transport::upgrade(
            req,
            payload,
            limits.max_message_bytes,
            limits.max_outbound_bytes,
        )?;
        let opened = Opened {
            socket: Socket::new(admission, link),
            inbound,
            settings: Arc::clone(&settings),
        };
        Ok((response, opened))
    }
}

/// Registers the four WebSocket endpoints.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/mac", web::get().to(mac))
        .route("/browser", web::get().to(browser))
        .route("/ws/agent", web::get().to(agent))
        .route("/ws/client", web::get().to(client));
}

async fn mac(
    req: HttpRequest,
    payload: web::Payload,
    relay: web::Data<Relay>,
) -> actix_web::Result<HttpResponse> {
    pair(Role::Mac, &req, payload, &relay)
}

async fn browser(
    req: HttpRequest,
    payload: web::Payload,
    relay: web::Data<Relay>,
) -> actix_web::Result<HttpResponse> {
    pair(Role::Browser, &req, payload, &relay)
}

fn pair(
    role: Role,
    req: &HttpRequest,
    payload: web::Payload,
    relay: &Relay,
) -> actix_web::Result<HttpResponse> {
    let (response, opened) = relay.open(req, payload, role.endpoint())?;
    let limiters = Arc::clone(&relay.limiters);
    PairSocket::start(role, opened, relay.pairing.clone(), limiters);
    Ok(response)
}

async fn agent(
    req: HttpRequest,
    payload: web::Payload,
    relay: web::Data<Relay>,
    accounts: web::Data<Accounts>,
) -> actix_web::Result<HttpResponse> {
    let (response, opened) = relay.open(&req, payload, Endpoint::Agent)?;
    let limiters = Arc::clone(&relay.limiters);
    AgentSocket::start(opened, relay.machines.clone(), accounts, limiters);
    Ok(response)
}

async fn client(
    req: HttpRequest,
    payload: web::Payload,
    relay: web::Data<Relay>,
    accounts: web::Data<Accounts>,
) -> actix_web::Result<HttpResponse> {
    let (response, opened) = relay.open(&req, payload, Endpoint::Client)?;
    let limiters = Arc::clone(&relay.limiters);
    ClientSocket::start(opened, relay.machines.clone(), accounts, limiters);
    Ok(response)
}
