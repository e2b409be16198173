//! `hermit-relay-bench`: measures hermit-relay against a minimal tokio-tungstenite relay of
//! the same pairing protocol, over real sockets, in one run, so every figure is a ratio.
//!
//! ```text
//! hermit-relay-bench run --relay PATH [--before PATH] [--quick] [--out FILE]
//!                        [--only latency|throughput|lossless|idle|pairing|slow|fanout|cross]
//! hermit-relay-bench count --relay PATH [--before PATH] [--quick] [--out FILE]
//!                        [--only messages|lossless|pairing|waiting|allocations|cross]
//!                        [--profiles DIR]
//! hermit-relay-bench baseline --port 9000 [--workers N]   # the baseline server alone
//! hermit-relay-bench soak --relay PATH [--secs 600] [--out FILE]   # see soak.rs
//! ```
//!
//! `run` measures rates (and their CPU cost); `count` counts instructions and allocations
//! under valgrind, which does not depend on how busy the machine is. `run --only cross`
//! (never part of a full run: it needs Redis and PostgreSQL) measures the relay on one node
//! against a two-node cluster, mac and browser on different nodes (`cross.rs`); `count
//! --only cross` counts the instructions of that cluster's two nodes (`count_cross.rs`).

mod baseline;
mod cluster;
mod cost;
mod count;
mod count_cross;
mod count_report;
mod cross;
mod load;
mod lossless;
mod run;
mod scenarios;
mod soak;
mod table;
mod target;
mod valgrind;
mod workloads;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::target::Server;

const USAGE: &str = "usage: hermit-relay-bench run|count --relay PATH [--before PATH] [--quick] \
                     [--out FILE] [--only NAME] [--profiles DIR] | baseline --port PORT [--workers N]";

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str);
    if mode == Some("baseline") {
        let port: u16 = arg(&args, "--port").context("--port")?.parse()?;
        let workers = arg(&args, "--workers").map_or(Ok(2), |w| w.parse())?;
        return baseline::run(port, workers);
    }
    if mode == Some("soak") {
        let relay = PathBuf::from(arg(&args, "--relay").context("--relay PATH")?);
        let secs = arg(&args, "--secs").map_or(Ok(600), |s| s.parse())?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let report = runtime.block_on(soak::soak(&relay, secs))?;
        println!("{report}");
        if let Some(out) = arg(&args, "--out") {
            std::fs::write(out, &report)?;
        }
        return Ok(());
    }
    if !matches!(mode, Some("run" | "count")) {
        bail!(USAGE);
    }
    let relay = PathBuf::from(arg(&args, "--relay").context("--relay PATH")?);
    let before = arg(&args, "--before").map(PathBuf::from);
    let servers = Server::all(&relay, before.as_deref());
    let quick = args.iter().any(|a| a == "--quick");
    let only = arg(&args, "--only");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = if mode == Some("run") {
        runtime.block_on(run::run_all(&servers, quick, only.as_deref()))?
    } else {
        let profiles = arg(&args, "--profiles").unwrap_or_else(|| "target/bench-count".into());
        runtime.block_on(count::count_all(
            &servers,
            quick,
            only.as_deref(),
            Path::new(&profiles),
        ))?
    };
    println!("{report}");
    if let Some(out) = arg(&args, "--out") {
        std::fs::write(out, &report)?;
    }
    Ok(())
}
