//! `/health` (the process answers) and `/ready` (and can reach its database).

use actix_web::{web, HttpResponse};
use diesel::connection::SimpleConnection;
use serde::Serialize;

use crate::accounts::Accounts;
use crate::db;
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

async fn ready(accounts: web::Data<Accounts>) -> Result<HttpResponse, ApiError> {
    db::run(&accounts.pool, |conn| {
        conn.batch_execute("SELECT 1")
            .map_err(|_| ApiError::Unavailable("the database is unavailable"))
    })
    .await?;
    Ok(HttpResponse::Ok().json(Status { status: "ready" }))
}
