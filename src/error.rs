//! Errors at the HTTP boundary.
//!
//! Policy: every error body is `{"error":"<human text>"}` (PROTOCOL.md §2). Texts name the
//! problem but never contain a token, password, hash or database detail; internal failures
//! are logged with their cause and answered with a generic 500. Model code returns
//! `diesel::QueryResult`; handlers return `Result<_, ApiError>`.
//!
//! Database failures are never a 500 unless they are bugs: an unreachable, full, read-only,
//! locked or slow database answers 503 with a text that says which (see `db::DbFault`).

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::db::fault::DbFault;

/// Every way an API request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed or breaks a rule.
    #[error("{0}")]
    BadRequest(String),
    /// 401: login failed. Same text for an unknown email and a wrong password.
    #[error("Invalid credentials")]
    InvalidCredentials,
    /// 401: missing, expired or invalid token.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// 403: registration is closed by config.
    #[error("Registration is closed")]
    RegistrationClosed,
    /// 403: refused by policy: an address the allowlist does not hold, a disabled account.
    #[error("{0}")]
    Forbidden(&'static str),
    /// 403: a web page from an origin not in `server.allowed_origins`.
    #[error("Origin not allowed")]
    OriginNotAllowed,
    /// 404: no such thing for this caller.
    #[error("{0}")]
    NotFound(&'static str),
    /// 413: the body is over `limits.max_body_bytes`.
    #[error("Request body is too large")]
    PayloadTooLarge,
    /// 429: too many attempts from this client address.
    #[error("Too many requests; try again later")]
    RateLimited,
    /// 429: too many wrong passwords for this account (from browsers without its device
    /// token). Same text for every email, known or not.
    #[error("Too many failed sign-ins for this account; try again later, or from a browser that signed in before")]
    LoginThrottled,
    /// 503: a dependency (database, hashing capacity) is unavailable right now.
    #[error("{0}")]
    Unavailable(&'static str),
    /// A database failure inside `db::run`'s work, classified; `db::run` turns it into
    /// [`Self::Unavailable`] or [`Self::Internal`] and reports it, so callers never see it.
    #[error("{}", .0.client_text())]
    Database(DbFault),
    /// 500: a bug or an unexpected failure, logged where it was created.
    #[error("Internal server error")]
    Internal,
}

impl ApiError {
    /// Logs `what` and returns the generic 500.
    pub fn internal(what: impl std::fmt::Display) -> Self {
        tracing::error!(error = %what, "internal error");
        Self::Internal
    }
}

impl From<diesel::result::Error> for ApiError {
    fn from(err: diesel::result::Error) -> Self {
        Self::Database(DbFault::classify(&err))
    }
}

impl From<DbFault> for ApiError {
    fn from(fault: DbFault) -> Self {
        if fault.is_bug() {
            Self::internal(fault)
        } else {
            Self::Unavailable(fault.client_text())
        }
    }
}

/// `{"error": "..."}`
#[derive(Serialize)]
pub struct ErrorResponse<'a> {
    /// Human-readable text.
    pub error: &'a str,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::InvalidCredentials | Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::RegistrationClosed | Self::OriginNotAllowed | Self::Forbidden(_) => {
                StatusCode::FORBIDDEN
            }
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RateLimited | Self::LoginThrottled => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Database(fault) if !fault.is_bug() => StatusCode::SERVICE_UNAVAILABLE,
            Self::Database(_) | Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if matches!(self, Self::InvalidCredentials | Self::Unauthorized(_)) {
            response.insert_header(("WWW-Authenticate", "Bearer"));
        }
        if matches!(self, Self::RateLimited) {
            // Every per-address limit refills fully within a minute.
            response.insert_header(("Retry-After", "60"));
        }
        response.json(ErrorResponse {
            error: &self.to_string(),
        })
    }
}
