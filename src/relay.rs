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
pub mod handoff;
pub mod opening;
pub mod pairing;
pub mod protocol;
pub mod socket;
pub mod tunnel;

use std::net::IpAddr;
use std::sync::Arc;

use actix::Addr;
use actix_codec::Framed;
use actix_http::body::BodySize;
use actix_http::ws::CloseCode;
use actix_http::{h1, HttpMessage, Request, Response};
use actix_rt::net::TcpStream;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use futures_util::SinkExt;

use crate::config::{Live, Settings};
use crate::connections::{Admission, Connections, Refused};
use crate::edge::HttpSlot;
use crate::error::ApiError;
use crate::ids::{Endpoint, Role};
use crate::limits::Limiters;
use crate::metrics::METRICS;
use crate::proxy::ClientAddr;
use crate::transport::{handshake, Killable, Upgraded};
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
    /// What every pairing connection shares (in a cluster, quick pairing across nodes).
    pub pair_node: Arc<pairing::socket::PairNode>,
    /// What every agent and client connection shares (in a cluster, accounts across nodes).
    pub account_node: Arc<account::node::AccountNode>,
}

impl Relay {
    /// Whether a page from `origin` may open `endpoint` (no `Origin`: not a page).
    fn origin_allowed(&self, origin: Option<&HeaderValue>, endpoint: Endpoint) -> bool {
        self.origin_allowed_bytes(origin.map(HeaderValue::as_bytes), endpoint)
    }

    /// [`Self::origin_allowed`] on the header's bytes.
    fn origin_allowed_bytes(&self, origin: Option<&[u8]>, endpoint: Endpoint) -> bool {
        let settings = self.settings.get();
        let allowed_origins = &settings.server.allowed_origins;
        if !endpoint.browser_facing() || allowed_origins.is_empty() {
            return true;
        }
        let Some(origin) = origin else {
            return true;
        };
        handshake::header_str(origin).is_some_and(|origin| {
            allowed_origins
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(origin))
        })
    }

    /// Checks the per-address limit before a WebSocket upgrade.
    fn admit(&self, req: &Request, endpoint: Endpoint) -> Result<Admission, ApiError> {
        let client = self.client_addr.of_parts(req.peer_addr(), req.headers());
        self.admit_client(client, endpoint)
    }

    /// Checks the per-address limit for `client`.
    fn admit_client(&self, client: IpAddr, endpoint: Endpoint) -> Result<Admission, ApiError> {
        self.connections
            .admit(client, endpoint)
            .map_err(|refused| match refused {
                Refused::TooMany => ApiError::RateLimited,
                Refused::ShuttingDown => ApiError::Unavailable("the relay is shutting down"),
            })
    }
}

/// The connection an upgrade request arrived on, as the HTTP layer hands it over.
pub type UpgradeConn = Framed<Killable<TcpStream>, h1::Codec>;

/// Serves one upgrade request. Every request asking to upgrade its connection comes here
/// rather than to the HTTP routes, so a WebSocket is taken out of the HTTP dispatcher from
/// its first byte on (see [`crate::transport`]). The returned future ends when the
/// connection is over.
pub async fn upgrade(
    relay: web::Data<Relay>,
    req: Request,
    mut conn: UpgradeConn,
) -> Result<(), actix_web::Error> {
    let Some(endpoint) = Endpoint::from_route(req.path()) else {
        return answer(conn, "unmatched", ApiError::NotFound("Not found")).await;
    };
    let route = endpoint.as_str();
    if let Err(err) = actix_http::ws::verify_handshake(req.head()) {
        let refusal = ApiError::BadRequest(format!("WebSocket upgrade required: {err}"));
        return answer(conn, route, refusal).await;
    }
    let origin_allowed = relay.origin_allowed(req.headers().get(header::ORIGIN), endpoint);
    let admission = match origin_allowed.then(|| relay.admit(&req, endpoint)) {
        Some(Err(refused)) => return answer(conn, route, refused).await,
        Some(Ok(admission)) => Some(admission),
        None => None,
    };
    let switching = actix_http::ws::handshake_response(req.head()).finish();
    conn.send(h1::Message::Item((switching.drop_body(), BodySize::None)))
        .await?;
    METRICS.http(route, 101, None);
    // A WebSocket counts against `max_connections_per_ip` now, not the HTTP cap.
    if let Some(slot) = req.conn_data::<Arc<HttpSlot>>() {
        slot.release();
    }
    let parts = conn.into_parts();
    let settings = relay.settings.snapshot();
    let limits = &settings.limits;
    let Some(upgraded) = crate::transport::take(
        parts.io,
        &parts.read_buf,
        limits.max_message_bytes,
        limits.max_outbound_bytes,
    ) else {
        return Ok(());
    };
    // This future lives as long as the connection: what the HTTP layer handed over (its
    // read and write buffers, its codec) and the request are let go now, not at the end.
    drop((parts.read_buf, parts.write_buf, parts.codec));
    let Some(admission) = admission else {
        // A 403 to the upgrade reaches a page only as close 1006, exactly what a network
        // drop looks like, so a page that reconnects on 1006 would retry for ever; the
        // upgrade is accepted instead and closed at once with 1008 (policy) and the reason
        // "origin not allowed", which the page can read.
        tracing::info!(
            client = %relay.client_addr.of_parts(req.peer_addr(), req.headers()),
            origin = ?req.headers().get(header::ORIGIN),
            "origin not allowed; closing with 1008"
        );
        upgraded.link.close(CloseCode::Policy, ORIGIN_NOT_ALLOWED);
        drop(upgraded.inbound);
        upgraded.writer.await;
        return Ok(());
    };
    drop(req);
    serve(&relay, endpoint, admission, upgraded, settings).await;
    Ok(())
}

/// Starts the connection actor of an upgraded, admitted WebSocket; ends when the
/// connection is over.
async fn serve(
    relay: &Relay,
    endpoint: Endpoint,
    admission: Admission,
    upgraded: Upgraded,
    settings: Arc<Settings>,
) {
    let opened = Opened {
        socket: Socket::new(admission, upgraded.link),
        inbound: upgraded.inbound,
        settings,
    };
    match endpoint {
        Endpoint::Mac | Endpoint::Browser => {
            let role = match endpoint {
                Endpoint::Mac => Role::Mac,
                _ => Role::Browser,
            };
            PairSocket::start(role, opened, Arc::clone(&relay.pair_node));
        }
        Endpoint::Agent => {
            AgentSocket::start(opened, Arc::clone(&relay.account_node));
        }
        Endpoint::Client => {
            ClientSocket::start(opened, Arc::clone(&relay.account_node));
        }
    }
    upgraded.writer.await;
}

/// Answers an upgrade request that is refused, as the HTTP API would, and closes.
async fn answer(
    mut conn: UpgradeConn,
    route: &str,
    refusal: ApiError,
) -> Result<(), actix_web::Error> {
    let response: Response<_> = refusal.error_response().into();
    let status = response.status().as_u16();
    let (head, body) = response.into_parts();
    let body = actix_web::body::to_bytes(body).await.unwrap_or_default();
    METRICS.http(route, status, None);
    conn.send(h1::Message::Item((
        head,
        BodySize::Sized(body.len() as u64),
    )))
    .await?;
    conn.send(h1::Message::Chunk(Some(body))).await?;
    conn.send(h1::Message::Chunk(None)).await?;
    Ok(())
}

/// The close reason a page from an origin not in `server.allowed_origins` reads (with 1008).
pub const ORIGIN_NOT_ALLOWED: &str = "origin not allowed";

/// Registers the four WebSocket endpoints for requests that do not ask to upgrade (those
/// that do never reach the routes: see [`upgrade`]): they are told what is missing.
pub fn routes(cfg: &mut web::ServiceConfig) {
    for endpoint in Endpoint::ALL {
        cfg.route(endpoint.as_str(), web::get().to(not_upgraded));
    }
}

async fn not_upgraded(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let reason = actix_http::ws::verify_handshake(req.head())
        .err()
        .map_or_else(|| "no upgrade".to_owned(), |err| err.to_string());
    Err(ApiError::BadRequest(format!(
        "WebSocket upgrade required: {reason}"
    )))
}
