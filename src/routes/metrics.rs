//! `GET /metrics`: Prometheus text (OpenMetrics if asked for), optionally behind a bearer
//! token. Both `metrics.enabled` and `metrics.token` are read per request, so a reload
//! changes them at once.

use actix_web::{http::header, web, HttpRequest, HttpResponse};
use subtle::ConstantTimeEq;

use crate::config::Live;
use crate::error::ApiError;
use crate::metrics::{METRICS, OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE};

/// Registers `/metrics`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(metrics));
}

async fn metrics(req: HttpRequest, settings: web::Data<Live>) -> Result<HttpResponse, ApiError> {
    let settings = settings.get();
    if !settings.metrics.enabled {
        return Err(ApiError::NotFound("Not found"));
    }
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
    let openmetrics = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    Ok(match openmetrics {
        true => HttpResponse::Ok()
            .content_type(OPENMETRICS_CONTENT_TYPE)
            .body(METRICS.render_openmetrics()),
        false => HttpResponse::Ok()
            .content_type(TEXT_CONTENT_TYPE)
            .body(METRICS.render()),
    })
}
