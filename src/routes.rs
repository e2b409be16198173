//! The HTTP API of PROTOCOL.md §2. Handlers parse, delegate and shape answers; the rules
//! live in `accounts` and the models.

pub mod auth;
pub mod health;
pub mod machines;
pub mod metrics;

use actix_web::{web, HttpRequest, HttpResponse};

use crate::error::{ApiError, ErrorResponse};

/// Registers every HTTP route and the JSON body limit; `/metrics` if enabled.
pub fn routes(max_body_bytes: usize, metrics: bool) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(json_config(max_body_bytes))
            .configure(health::routes)
            .configure(auth::routes)
            .configure(machines::routes);
        if metrics {
            cfg.configure(metrics::routes);
        }
    }
}

/// Unknown routes answer `404 {"error":"Not found"}`.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound("Not found"))
}

/// JSON bodies: limited in size (413), and every parse failure is a 400 with our shape.
fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(limit)
        .error_handler(|err, _: &HttpRequest| {
            use actix_web::error::JsonPayloadError;
            if matches!(&err, JsonPayloadError::Payload(err) if crate::edge::is_body_timeout(err)) {
                let body = ErrorResponse {
                    error: "The request body did not arrive in time",
                };
                let response = HttpResponse::RequestTimeout().json(body);
                return actix_web::error::InternalError::from_response(err, response).into();
            }
            let api = match &err {
                JsonPayloadError::Overflow { .. }
                | JsonPayloadError::OverflowKnownLength { .. } => ApiError::PayloadTooLarge,
                JsonPayloadError::ContentType => ApiError::BadRequest(
                    "Expected a JSON body (Content-Type: application/json)".into(),
                ),
                JsonPayloadError::Deserialize(err) if err.is_data() => {
                    let text = err.to_string();
                    let text = text.split(" at line").next().unwrap_or(&text);
                    ApiError::BadRequest(format!("Invalid request: {text}"))
                }
                _ => ApiError::BadRequest("Request body is not valid JSON".into()),
            };
            api.into()
        })
}
