//! `GET/POST /api/machines`, `DELETE /api/machines/{id}`.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};

use actix::Addr;

use crate::accounts::Accounts;
use crate::auth::extractor::AuthUser;
use crate::config::Settings;
use crate::error::ApiError;
use crate::ids::MachineId;
use crate::relay::account::directory;
use crate::relay::account::registry::MachineRegistry;
use crate::relay::protocol::MachineInfo;

/// Registers the `/api/machines` routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/machines", web::get().to(list))
        .route("/api/machines", web::post().to(create))
        .route("/api/machines/{id}", web::delete().to(delete));
}

#[derive(Serialize)]
struct MachineList {
    machines: Vec<MachineInfo>,
}

#[derive(Deserialize)]
struct NewMachineBody {
    name: String,
}

#[derive(Serialize)]
struct Created {
    machine: MachineInfo,
    /// Shown only here; stored as a hash.
    token: String,
}

async fn list(
    user: AuthUser,
    accounts: web::Data<Accounts>,
    registry: web::Data<Addr<MachineRegistry>>,
) -> Result<HttpResponse, ApiError> {
    let machines = directory::list(&accounts.pool, &registry, &user.user_id).await?;
    Ok(HttpResponse::Ok().json(MachineList { machines }))
}

async fn create(
    user: AuthUser,
    accounts: web::Data<Accounts>,
    settings: web::Data<Settings>,
    body: web::Json<NewMachineBody>,
) -> Result<HttpResponse, ApiError> {
    let most = settings.limits.max_machines_per_user;
    let (machine, token) =
        directory::create(&accounts.pool, &user.user_id, &body.name, most).await?;
    Ok(HttpResponse::Ok().json(Created { machine, token }))
}

async fn delete(
    user: AuthUser,
    accounts: web::Data<Accounts>,
    registry: web::Data<Addr<MachineRegistry>>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let machine = MachineId::from(id.into_inner());
    directory::delete(&accounts.pool, &registry, &user.user_id, &machine).await?;
    Ok(HttpResponse::NoContent().finish())
}
