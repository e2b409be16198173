//! `GET /`: the front door. An operator who opens the relay's address sees at once that it
//! is up and healthy: name, version, uptime, what is connected, whether the database
//! answered its last check, and links to the machine-readable endpoints. HTML for a
//! browser, JSON for `Accept: application/json`.
//!
//! Cheap to serve and safe to show: counters already kept for `/metrics` and the
//! database state the admin watcher records every `admin.poll_interval_ms` (no query per
//! request); no address, token, user or setting value. (No cluster backplane exists yet;
//! when one does, its state belongs here too.)

use std::sync::Arc;
use std::time::Instant;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;

use crate::config::Live;
use crate::ids::Endpoint;
use crate::metrics::METRICS;
use crate::watch::DatabaseHealth;

/// When the relay started.
#[derive(Debug, Clone, Copy)]
pub struct Started(pub Instant);

/// Registers `/`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(status));
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    name: &'static str,
    version: &'static str,
    /// `ok`, or `degraded` while the database does not answer.
    status: &'static str,
    uptime_secs: u64,
    pairings: i64,
    connections: Connections,
    database: Database,
    links: Links,
}

#[derive(Serialize)]
struct Connections {
    mac: i64,
    browser: i64,
    agents: i64,
    clients: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Database {
    backend: &'static str,
    /// `reachable`, `unreachable`, or `unknown` before the first check.
    state: &'static str,
    checked_secs_ago: Option<u64>,
}

#[derive(Serialize)]
struct Links {
    health: &'static str,
    ready: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics: Option<&'static str>,
}

async fn status(
    req: HttpRequest,
    started: web::Data<Started>,
    settings: web::Data<Live>,
    health: web::Data<Arc<DatabaseHealth>>,
) -> HttpResponse {
    let settings = settings.get();
    let (state, checked) = match health.last() {
        None => ("unknown", None),
        Some((true, ago)) => ("reachable", Some(ago.as_secs())),
        Some((false, ago)) => ("unreachable", Some(ago.as_secs())),
    };
    let status = Status {
        name: env!("CARGO_PKG_NAME"),
        version: env!("CARGO_PKG_VERSION"),
        status: if state == "unreachable" {
            "degraded"
        } else {
            "ok"
        },
        uptime_secs: started.0.elapsed().as_secs(),
        pairings: METRICS.live_pairings(),
        connections: Connections {
            mac: METRICS.live(Endpoint::Mac),
            browser: METRICS.live(Endpoint::Browser),
            agents: METRICS.live(Endpoint::Agent),
            clients: METRICS.live(Endpoint::Client),
        },
        database: Database {
            backend: if settings.database.url.starts_with("sqlite:") {
                "sqlite"
            } else {
                "postgres"
            },
            state,
            checked_secs_ago: checked,
        },
        links: Links {
            health: "/health",
            ready: "/ready",
            metrics: settings.metrics.enabled.then_some("/metrics"),
        },
    };
    let wants_json = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/json"));
    match wants_json {
        true => HttpResponse::Ok().json(status),
        false => HttpResponse::Ok()
            .content_type("text/html; charset=utf-8")
            .body(html(&status)),
    }
}

fn html(s: &Status) -> String {
    let uptime = {
        let t = s.uptime_secs;
        format!(
            "{}d {}h {}m {}s",
            t / 86_400,
            t / 3600 % 24,
            t / 60 % 60,
            t % 60
        )
    };
    let checked = s
        .database
        .checked_secs_ago
        .map_or(String::new(), |ago| format!(" (checked {ago} s ago)"));
    let metrics = s
        .links
        .metrics
        .map_or(String::new(), |m| format!(" · <a href=\"{m}\">{m}</a>"));
    let c = &s.connections;
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>{name} — {status}</title>\
         <style>body{{font:16px system-ui,sans-serif;max-width:36em;margin:2em auto;padding:0 1em}}\
         th{{text-align:left;padding-right:2em}}.ok{{color:#17803d}}.degraded{{color:#b42318}}</style>\
         </head><body>\n<h1>{name} <small>{version}</small></h1>\n\
         <p class=\"{status}\">Status: <strong>{status}</strong></p>\n<table>\n\
         <tr><th>Uptime</th><td>{uptime}</td></tr>\n\
         <tr><th>Pairings</th><td>{pairings}</td></tr>\n\
         <tr><th>Macs / browsers</th><td>{mac} / {browser}</td></tr>\n\
         <tr><th>Agents / clients</th><td>{agents} / {clients}</td></tr>\n\
         <tr><th>Database</th><td>{backend}: {state}{checked}</td></tr>\n</table>\n\
         <p><a href=\"/health\">/health</a> · <a href=\"/ready\">/ready</a>{metrics}</p>\n\
         </body></html>\n",
        name = s.name,
        version = s.version,
        status = s.status,
        pairings = s.pairings,
        mac = c.mac,
        browser = c.browser,
        agents = c.agents,
        clients = c.clients,
        backend = s.database.backend,
        state = s.database.state,
    )
}
