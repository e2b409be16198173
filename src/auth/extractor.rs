//! `AuthUser`: the caller of an `/api` route, from its `Authorization: Bearer` token.

use std::future::{ready, Ready};

use actix_web::{dev::Payload, web, FromRequest, HttpRequest};

use crate::accounts::Accounts;
use crate::error::ApiError;
use crate::ids::UserId;

/// A request whose bearer token is a valid access token.
#[derive(Debug, Clone)]
pub struct AuthUser {
    /// The user the token was issued to.
    pub user_id: UserId,
}

impl FromRequest for AuthUser {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authenticate(req))
    }
}

fn authenticate(req: &HttpRequest) -> Result<AuthUser, ApiError> {
    let accounts = req
        .app_data::<web::Data<Accounts>>()
        .ok_or_else(|| ApiError::internal("accounts state missing"))?;
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .ok_or(ApiError::Unauthorized("Missing bearer token"))?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .ok_or(ApiError::Unauthorized("Missing bearer token"))?;
    let user_id = accounts.tokens.verify(token).map_err(|err| {
        tracing::debug!(%err, "access token refused");
        ApiError::Unauthorized("Invalid or expired token")
    })?;
    Ok(AuthUser {
        user_id: UserId::from(user_id),
    })
}
