//! `/auth/register`, `/auth/login`, `/auth/refresh`, `/auth/logout`.

use actix_web::{web, HttpResponse};
use serde::Deserialize;

use crate::accounts::Accounts;
use crate::error::ApiError;

/// Registers the `/auth` routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/auth/register", web::post().to(register))
        .route("/auth/login", web::post().to(login))
        .route("/auth/refresh", web::post().to(refresh))
        .route("/auth/logout", web::post().to(logout));
}

/// `{"email","password"}`. Deliberately no `Debug`: it holds a password.
#[derive(Deserialize)]
struct Credentials {
    email: String,
    password: String,
}

/// `{"refreshToken"}`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RefreshBody {
    refresh_token: String,
}

async fn register(
    accounts: web::Data<Accounts>,
    body: web::Json<Credentials>,
) -> Result<HttpResponse, ApiError> {
    let Credentials { email, password } = body.into_inner();
    let signed_in = accounts.register(&email, password).await?;
    Ok(HttpResponse::Ok().json(signed_in))
}

async fn login(
    accounts: web::Data<Accounts>,
    body: web::Json<Credentials>,
) -> Result<HttpResponse, ApiError> {
    let Credentials { email, password } = body.into_inner();
    let signed_in = accounts.login(&email, password).await?;
    Ok(HttpResponse::Ok().json(signed_in))
}

async fn refresh(
    accounts: web::Data<Accounts>,
    body: web::Json<RefreshBody>,
) -> Result<HttpResponse, ApiError> {
    let refreshed = accounts.refresh(&body.refresh_token).await?;
    Ok(HttpResponse::Ok().json(refreshed))
}

async fn logout(
    accounts: web::Data<Accounts>,
    body: web::Json<RefreshBody>,
) -> Result<HttpResponse, ApiError> {
    accounts.logout(&body.refresh_token).await?;
    Ok(HttpResponse::NoContent().finish())
}
