//! What the agent and client connections of one node share.

use std::sync::Arc;

use actix::Addr;
use actix_web::web;

use super::registry::MachineRegistry;
use super::remote::Remote;
use crate::accounts::Accounts;
use crate::limits::Limiters;

/// What every agent and client connection of a node shares: built once, one pointer per
/// connection.
pub struct AccountNode {
    /// The machine registry.
    pub registry: Addr<MachineRegistry>,
    /// Accounts: tokens, users, the database.
    pub accounts: web::Data<Accounts>,
    /// Attempt limits.
    pub limiters: Arc<Limiters>,
    /// In a cluster: the users' nodes (see `remote`); `None` for virtual connections too.
    pub remote: Option<Remote>,
}
