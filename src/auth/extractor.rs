//! `AuthUser`: the caller of an `/api` route, from its `Authorization: Bearer` token.
//!
//! A valid token is not enough: its user must still exist and not be disabled
//! ([`crate::accounts::active_user`], one primary-key read per request), so an operator's
//! `hermit-relay users disable` or `delete` shuts out access tokens that have not expired.

use std::future::Future;
use std::pin::Pin;

use actix_web::{dev::Payload, web, FromRequest, HttpRequest};

use crate::accounts::Accounts;
use crate::error::ApiError;
use crate::ids::UserId;

/// A request whose bearer token is a valid access token of an active user.
#[derive(Debug, Clone)]
pub struct AuthUser {
    /// The user the token was issued to.
    pub user_id: UserId,
}

impl FromRequest for AuthUser {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let verified = verify(req);
        Box::pin(async move {
            let (accounts, user_id) = verified?;
            match accounts.active_user(&user_id).await? {
                Some(_) => Ok(AuthUser {
                    user_id: UserId::from(user_id),
                }),
                None => Err(ApiError::Unauthorized(
                    "This account is disabled or no longer exists",
                )),
            }
        })
    }
}

/// The token's user id, if the token is valid.
fn verify(req: &HttpRequest) -> Result<(web::Data<Accounts>, String), ApiError> {
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
    Ok((accounts.clone(), user_id))
}
