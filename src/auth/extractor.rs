//! `AuthUser`: the caller of an `/api` route, from its `Authorization: Bearer` token, whose
//! account is still active.
//!
//! A valid token is not enough: its user must still exist and not be disabled
//! ([`Accounts::active_user`], one primary-key read per request), so an operator's
//! `hermit-relay users disable` or `delete` shuts out access tokens that have not expired.

use actix_web::{dev::Payload, web, FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;

use crate::accounts::Accounts;
use crate::error::ApiError;
use crate::ids::UserId;

/// A request whose bearer token is a valid access token of an active account.
#[derive(Debug, Clone)]
pub struct AuthUser {
    /// The user the token was issued to.
    pub user_id: UserId,
}

impl FromRequest for AuthUser {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let accounts = req.app_data::<web::Data<Accounts>>().cloned();
        let verified = accounts
            .as_ref()
            .ok_or_else(|| ApiError::internal("accounts state missing"))
            .and_then(|accounts| verify(req, accounts));
        Box::pin(async move {
            let user_id = verified?;
            if let Some(accounts) = accounts {
                accounts.active_user(&user_id).await?;
            }
            Ok(AuthUser { user_id })
        })
    }
}

/// The user id of the request's valid bearer token (no database involved).
fn verify(req: &HttpRequest, accounts: &Accounts) -> Result<UserId, ApiError> {
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
    Ok(UserId::from(user_id))
}
