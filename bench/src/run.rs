//! The `run` mode: every rate scenario on every server in turn (relay, before, baseline),
//! each server fresh per scenario, tabulated with the relay's ratios to the others; or,
//! with `--only cross`, the relay on one node against a two-node cluster (`cross.rs`).

use anyhow::Context;

use crate::cross;
use crate::load::Ends;
use crate::lossless;
use crate::scenarios::{self, Latency, Throughput};
use crate::table::{Cell, Table};
use crate::target::Server;

/// The cost row's label, beside a rate row.
const COST: &str =
    "↳ server CPU-µs per relayed message (server / load generator CPU s in the window)";

/// Runs the scenarios (all, or `only` one) on `servers` and returns a Markdown table.
pub async fn run_all(
    servers: &[Server],
    quick: bool,
    only: Option<&str>,
) -> anyhow::Result<String> {
    // Cross-node runs only when asked for: it needs Redis and PostgreSQL, and has a table
    // of its own (the relay alone, on one node and on two).
    if only == Some("cross") {
        let relay = servers.iter().find(|s| s.is_relay()).context("no relay")?;
        return cross::run(relay, quick).await;
    }
    let scale = |full: u64, small: u64| if quick { small } else { full };
    let want = |name: &str| only.is_none_or(|o| o == name);
    let mut table = Table::new("scenario", servers.iter().map(|s| s.name).collect(), true);

    // 1. Latency.
    if want("latency") {
        let secs = scale(10, 3);
        let mut lat = Vec::new();
        for server in servers {
            lat.push(scenarios::latency(&Ends::single(&server.start()?), 100, 100, secs).await?);
        }
        let samples: Vec<String> = lat.iter().map(|l| l.samples.to_string()).collect();
        for (name, pick) in [
            ("p50", (|l: &Latency| l.p50) as fn(&Latency) -> u64),
            ("p90", |l| l.p90),
            ("p99", |l| l.p99),
            ("p99.9", |l| l.p999),
            ("max", |l| l.max),
        ] {
            let label = format!(
                "latency {name}, 100 pairs × 100 msg/s × {secs} s (µs; {} samples)",
                samples.join(" / ")
            );
            let cells = lat.iter().map(|l| Some(Cell::number(pick(l) as f64, 0)));
            table.row(
                label,
                cells.collect(),
                if name == "p99" { "≤ 1.2" } else { "" },
            );
        }
        let cells = lat.iter().map(|l| cost_cell(&l.cost));
        table.row(COST, cells.collect(), "");
    }

    // 2. Throughput.
    if want("throughput") {
        for (pairs, window) in [(1u32, 64usize), (100, 8)] {
            let secs = scale(5, 2);
            let mut rates = Vec::new();
            for server in servers {
                rates.push(
                    scenarios::throughput(&Ends::single(&server.start()?), pairs, window, secs)
                        .await?,
                );
            }
            let label =
                format!("throughput, {pairs} pair(s), 1 KiB, window {window} (msg/s; MB/s)");
            let cells = rates.iter().map(|r| rate_cell(Some(r)));
            table.row(label, cells.collect(), "≥ 0.8");
            table.row(COST, rates.iter().map(|r| cost_cell(&r.cost)).collect(), "");
        }
    }

    // 2b. Throughput in lossless mode, both sides opted in (hermit-relay builds only: the
    // baseline's cells stay empty); the plain rows above are the same run's comparison.
    if want("lossless") {
        for (pairs, window) in [(1u32, 64usize), (100, 8)] {
            let secs = scale(5, 2);
            let mut rates = Vec::new();
            for server in servers {
                rates.push(if server.is_relay() {
                    let target = server.start()?;
                    Some(lossless::throughput(&target, pairs, window, secs).await?)
                } else {
                    None
                });
            }
            let label = format!(
                "throughput, {pairs} pair(s), 1 KiB, window {window}, lossless (both sides \
                 ack every {} messages; baseline: no such mode) (msg/s; MB/s)",
                lossless::ACK_EVERY
            );
            table.row(
                label,
                rates.iter().map(|r| rate_cell(r.as_ref())).collect(),
                "",
            );
            let costs = rates
                .iter()
                .map(|r| r.as_ref().and_then(|r| cost_cell(&r.cost)));
            table.row(COST, costs.collect(), "");
        }
    }

    // 3. Idle memory.
    if want("idle") {
        for pairs in [scale(5000, 1000) as u32, scale(9000, 2000) as u32] {
            let mut cells = Vec::new();
            for server in servers {
                let (per_pair, errors) = scenarios::idle_memory(&server.start()?, pairs).await;
                let text = format!("{:.1} ({errors})", per_pair / 1024.0);
                cells.push(Some(Cell::with_text(per_pair, text)));
            }
            let label = format!("idle memory, {pairs} pairs (KiB per pair; errors)");
            table.row(label, cells, "≤ 16 KiB");
        }
    }

    // 4. Pairing rate.
    if want("pairing") {
        let n = scale(2000, 500) as u32;
        let mut cells = Vec::new();
        for server in servers {
            let rate = scenarios::pairing_rate(server.start()?.port, n, 50).await?;
            cells.push(Some(Cell::number(rate, 0)));
        }
        let label = format!("pairing rate, {n} pairings, 50 at a time (pairings/s)");
        table.row(label, cells, "≥ 0.9");
    }

    // 5. Slow consumer.
    if want("slow") {
        let secs = scale(8, 4);
        let mut cells = Vec::new();
        for server in servers {
            let (peak, told) = scenarios::slow_consumer(&server.start()?, secs).await?;
            let told = told.map_or("never told".into(), |t| {
                format!("told after {:.1} s", t.as_secs_f64())
            });
            let text = format!("{:.1} ({told})", peak as f64 / 1048576.0);
            cells.push(Some(Cell::with_text(peak as f64, text)));
        }
        let label = format!("slow consumer, {secs} s flood (peak RSS growth MiB; mac told)");
        table.row(label, cells, "bounded by max_outbound_bytes");
    }

    // 6. Fan-out (account mode exists only in the relay builds).
    if want("fanout") {
        for clients in [1u32, 10, 100] {
            let mut cells = Vec::new();
            for server in servers {
                cells.push(if server.is_relay() {
                    let target = server.start()?;
                    let rate =
                        scenarios::fan_out(&target, clients, scale(2000, 500) as u32).await?;
                    Some(Cell::number(rate, 0))
                } else {
                    None
                });
            }
            let label = format!("fan-out, 1 session → {clients} client(s), 1 KiB (deliveries/s)");
            table.row(label, cells, "");
        }
    }

    Ok(table.to_markdown())
}

/// A throughput cell: messages per second, and MB/s of payload beside them.
fn rate_cell(rate: Option<&Throughput>) -> Option<Cell> {
    let r = rate?;
    let text = format!(
        "{:.0} ({:.1} MB/s)",
        r.per_second,
        r.per_second * 1024.0 / 1e6
    );
    Some(Cell::with_text(r.per_second, text))
}

fn cost_cell(cost: &crate::cost::Cost) -> Option<Cell> {
    Some(Cell::with_text(
        cost.server_us_per_message(),
        cost.describe(),
    ))
}
