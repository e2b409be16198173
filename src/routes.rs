//! Plain HTTP routes.

use actix_web::{web, HttpResponse};
use serde_json::json;

/// Registers `/health`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health));
}

/// Liveness: the process answers HTTP.
async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}
