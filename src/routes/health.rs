//! `/health` (the process answers) and `/ready` (and its database — and, in a cluster,
//! Redis — can do the relay's work).

use crate::relay::Relay;
use actix_web::{web, HttpResponse};
use serde::Serialize;

use crate::accounts::Accounts;
use crate::cluster::Cluster;
use crate::error::ApiError;

#[derive(Serialize)]
struct Status {
    status: &'static str,
}

/// Registers `/health` and `/ready`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health))
        .route("/ready", web::get().to(ready));
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(Status { status: "ok" })
}

/// 200 while the database is reachable, migrated and takes a committed write; otherwise
/// 503 saying which of those failed. Answered from a check at most
/// `database.health_check_interval_ms` old, so load balancers polling it cost little.
/// A node of a cluster is also unready while it does not reach Redis (as of its last
/// heartbeat): a load balancer then sends new clients to the nodes that can pair them.
/// A relay shutting down (handing its pairings over) is unready too.
async fn ready(
    accounts: web::Data<Accounts>,
    cluster: Option<web::Data<Cluster>>,
    relay: Option<web::Data<Relay>>,
) -> Result<HttpResponse, ApiError> {
    if relay.is_some_and(|relay| relay.connections.shutting_down()) {
        return Err(ApiError::Unavailable("the relay is shutting down"));
    }
    if cluster.is_some_and(|cluster| !cluster.healthy()) {
        return Err(ApiError::Unavailable("the cluster's Redis is unreachable"));
    }
    accounts
        .pool
        .readiness()
        .await
        .map_err(ApiError::Unavailable)?;
    Ok(HttpResponse::Ok().json(Status { status: "ready" }))
}
