//! The HTTP API of PROTOCOL.md §2, the status page and `/metrics`. Handlers parse,
//! delegate and shape answers; the rules live in `accounts` and the models.

pub mod auth;
pub mod health;
pub mod machines;
pub mod metrics;
pub mod status;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::dev::{Payload, Service, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::header;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::Stream;

use crate::config::check::MAX_BODY_BYTES;
use crate::config::Live;
use crate::error::{ApiError, ErrorResponse};

/// Registers every HTTP route and the JSON body ceiling (the live limit is
/// [`limit_body`]'s).
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(json_config(MAX_BODY_BYTES))
        .configure(status::routes)
        .configure(health::routes)
        .configure(auth::routes)
        .configure(machines::routes)
        .configure(metrics::routes);
}

/// Unknown routes answer `404 {"error":"Not found"}`.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound("Not found"))
}

/// Middleware: bodies over `limits.max_body_bytes`, read per request so a reload changes
/// it at once, are refused with 413 — by their `Content-Length` before anything is read,
/// and a chunked body as soon as it passes the limit. Requests without a body (WebSocket
/// upgrades among them) are not touched.
pub fn limit_body<S>(
    mut req: ServiceRequest,
    service: &S,
) -> Pin<Box<dyn Future<Output = Result<ServiceResponse, actix_web::Error>>>>
where
    S: Service<ServiceRequest, Response = ServiceResponse, Error = actix_web::Error>,
    S::Future: 'static,
{
    let limit = req
        .app_data::<web::Data<Live>>()
        .map_or(MAX_BODY_BYTES, |live| live.get().limits.max_body_bytes);
    let headers = req.headers();
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let chunked = headers
        .get(header::TRANSFER_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if length.is_some_and(|length| length > limit) {
        let response = actix_web::ResponseError::error_response(&ApiError::PayloadTooLarge);
        return Box::pin(std::future::ready(Ok(req.into_response(response))));
    }
    if chunked {
        let inner = req.take_payload();
        req.set_payload(Payload::from(Box::pin(Limited { inner, left: limit })
            as Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>>));
    }
    Box::pin(service.call(req))
}

/// A request body that fails with `Overflow` once more than `left` bytes arrive.
struct Limited {
    inner: Payload,
    left: usize,
}

impl Stream for Limited {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => match self.left.checked_sub(chunk.len()) {
                Some(left) => {
                    self.left = left;
                    Poll::Ready(Some(Ok(chunk)))
                }
                None => Poll::Ready(Some(Err(PayloadError::Overflow))),
            },
            other => other,
        }
    }
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
                | JsonPayloadError::OverflowKnownLength { .. }
                | JsonPayloadError::Payload(PayloadError::Overflow) => ApiError::PayloadTooLarge,
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
