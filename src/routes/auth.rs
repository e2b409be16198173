//! `/auth/register`, `/auth/login`, `/auth/refresh`, `/auth/logout`.

use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use crate::accounts::{normalise_email, Accounts};
use crate::audit;
use crate::error::ApiError;
use crate::limits::{Attempt, Limiters};
use crate::metrics::METRICS;
use crate::proxy::ClientAddr;

/// Refuses the request if its client address has used up its attempts this minute (in a
/// cluster: on any node); otherwise answers that address.
async fn limit(req: &HttpRequest) -> Result<IpAddr, ApiError> {
    let limiters = req.app_data::<web::Data<Limiters>>();
    let client_addr = req.app_data::<web::Data<ClientAddr>>();
    let (Some(limiters), Some(client_addr)) = (limiters, client_addr) else {
        return Err(ApiError::internal("rate limiter state missing"));
    };
    let from = client_addr.of(req);
    if !limiters.auth.check(from) {
        return Err(ApiError::RateLimited);
    }
    if let Some(check) = limiters.cluster_check(Attempt::Auth, from) {
        if !check.await {
            return Err(ApiError::RateLimited);
        }
    }
    Ok(from)
}

/// Counts a refused login or token for `/metrics`.
fn count_failure<T>(result: Result<T, ApiError>) -> Result<T, ApiError> {
    if matches!(
        result,
        Err(ApiError::InvalidCredentials | ApiError::Unauthorized(_))
    ) {
        METRICS.auth_failures.fetch_add(1, Relaxed);
    }
    result
}

/// Registers the `/auth` routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/auth/register", web::post().to(register))
        .route("/auth/login", web::post().to(login))
        .route("/auth/refresh", web::post().to(refresh))
        .route("/auth/logout", web::post().to(logout));
}

/// `{"email","password"}`, and for login an optional `"deviceToken"`. Deliberately no
/// `Debug`: it holds a password.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Credentials {
    email: String,
    password: String,
    #[serde(default)]
    device_token: Option<String>,
}

/// `{"refreshToken"}`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RefreshBody {
    refresh_token: String,
}

async fn register(
    req: HttpRequest,
    accounts: web::Data<Accounts>,
    body: web::Json<Credentials>,
) -> Result<HttpResponse, ApiError> {
    let from = limit(&req).await?;
    let Credentials {
        email, password, ..
    } = body.into_inner();
    let signed_in = accounts.register(from, &email, password).await?;
    audit::event("register")
        .user(signed_in.user.id.as_str())
        .email(&signed_in.user.email)
        .client(from)
        .record();
    Ok(HttpResponse::Ok().json(signed_in))
}

async fn login(
    req: HttpRequest,
    accounts: web::Data<Accounts>,
    body: web::Json<Credentials>,
) -> Result<HttpResponse, ApiError> {
    let from = limit(&req).await?;
    let Credentials {
        email,
        password,
        device_token,
    } = body.into_inner();
    let signed_in = accounts
        .login(from, &email, password, device_token.as_deref())
        .await;
    let signed_in = match count_failure(signed_in) {
        Ok(signed_in) => signed_in,
        Err(err) => {
            let reason = match err {
                ApiError::InvalidCredentials => "invalid_credentials",
                ApiError::Forbidden(_) => "disabled",
                ApiError::LoginThrottled => "throttled",
                _ => return Err(err),
            };
            let tried = normalise_email(&email).unwrap_or_default();
            audit::event("login_refused")
                .email(&tried)
                .client(from)
                .reason(reason)
                .record();
            return Err(err);
        }
    };
    audit::event("login")
        .user(signed_in.user.id.as_str())
        .email(&signed_in.user.email)
        .client(from)
        .record();
    Ok(HttpResponse::Ok().json(signed_in))
}

async fn refresh(
    req: HttpRequest,
    accounts: web::Data<Accounts>,
    body: web::Json<RefreshBody>,
) -> Result<HttpResponse, ApiError> {
    let client = limit(&req).await?;
    let refreshed = count_failure(accounts.refresh(&body.refresh_token, client).await)?;
    Ok(HttpResponse::Ok().json(refreshed))
}

/// Limited like the others: it is unauthenticated and costs a database write, so unlimited
/// it would be a free way to load the database.
async fn logout(
    req: HttpRequest,
    accounts: web::Data<Accounts>,
    body: web::Json<RefreshBody>,
) -> Result<HttpResponse, ApiError> {
    limit(&req).await?;
    accounts.logout(&body.refresh_token).await?;
    Ok(HttpResponse::NoContent().finish())
}
