//! `GET/POST /api/machines`, `DELETE /api/machines/{id}`.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};

use actix::Addr;

use crate::accounts::Accounts;
use crate::audit;
use crate::auth::extractor::AuthUser;
use crate::config::Live;
use crate::error::ApiError;
use crate::ids::MachineId;
use crate::proxy::ClientAddr;
use crate::relay::account::directory;
use crate::relay::account::registry::MachineRegistry;
use crate::relay::protocol::MachineInfo;
use crate::relay::Relay;

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
    relay: web::Data<Relay>,
) -> Result<HttpResponse, ApiError> {
    let remote = relay.account_node.remote.as_ref();
    let machines = directory::list(&accounts.pool, &registry, remote, &user.user_id).await?;
    Ok(HttpResponse::Ok().json(MachineList { machines }))
}

/// The client address of `req`, for the audit log.
fn client(req: &HttpRequest) -> std::net::IpAddr {
    req.app_data::<web::Data<ClientAddr>>()
        .map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |addr| addr.of(req))
}

async fn create(
    req: HttpRequest,
    user: AuthUser,
    accounts: web::Data<Accounts>,
    settings: web::Data<Live>,
    body: web::Json<NewMachineBody>,
) -> Result<HttpResponse, ApiError> {
    let most = settings.get().limits.max_machines_per_user;
    let (machine, token) =
        directory::create(&accounts.pool, &user.user_id, &body.name, most).await?;
    audit::event("machine_created")
        .user(user.user_id.as_str())
        .machine(machine.id.as_str())
        .client(client(&req))
        .record();
    Ok(HttpResponse::Ok().json(Created { machine, token }))
}

async fn delete(
    req: HttpRequest,
    user: AuthUser,
    accounts: web::Data<Accounts>,
    registry: web::Data<Addr<MachineRegistry>>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let machine = MachineId::from(id.into_inner());
    directory::delete(&accounts.pool, &registry, &user.user_id, &machine).await?;
    audit::event("machine_deleted")
        .user(user.user_id.as_str())
        .machine(machine.as_str())
        .client(client(&req))
        .record();
    Ok(HttpResponse::NoContent().finish())
}
