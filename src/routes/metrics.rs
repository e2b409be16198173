//! `GET /metrics`: Prometheus text, optionally behind a bearer token.

use actix_web::{http::header, web, HttpRequest, HttpResponse};
use subtle::ConstantTimeEq;

use crate::config::Settings;
use crate::error::ApiError;
use crate::metrics::METRICS;

/// Registers `/metrics`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(metrics));
}

async fn metrics(
    req: HttpRequest,
    settings: web::Data<Settings>,
) -> Result<HttpResponse, ApiError> {
    let token = &settings.metrics.token;
    if !token.is_empty() {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        let matches = presented.len() == token.len()
            && bool::from(presented.as_bytes().ct_eq(token.as_bytes()));
        if !matches {
            return Err(ApiError::Unauthorized("A metrics token is required"));
        }
    }
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(METRICS.render()))
}
