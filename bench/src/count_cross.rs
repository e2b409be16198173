//! The counted cross-node figure (issue 11, `count --only cross`): instructions per relayed
//! message on node A and on node B of a two-node cluster — mac on A, browser on B — each
//! node under callgrind on one worker thread, as the difference of two runs of different
//! lengths (the method of `count.rs`); beside it, the same count on one relay in the same
//! run. Redis is not under valgrind: its share of the hop is in the rates (`cross.rs`).

use std::path::{Path, PathBuf};

use crate::cluster::Cluster;
use crate::table::{Cell, Compare, Table};
use crate::target::Server;
use crate::valgrind::{self, callgrind_phase, callgrind_wrapper, Marker, Tool};
use crate::workloads;

const COLUMNS: [&str; 4] = [
    "single node",
    "cross-node, node A",
    "cross-node, node B",
    "cross-node, A + B",
];

/// One run's instructions in its measured phase: the single relay's (one figure) or
/// nodes A's and B's.
type Phase = Vec<u64>;

/// Counts the single relay and the cluster at 64 B and 1 KiB, one message in flight (each
/// message handled alone, as at a low rate), and at 1 KiB with 64 in flight.
pub async fn count(relay: &Server, quick: bool, profiles: &Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(profiles)?;
    let lengths = if quick { [500, 3000] } else { [2000, 12000] };
    let mut table =
        Table::new("measure (Redis not counted)", COLUMNS.to_vec(), false).comparing(vec![
            Compare::Ratio(3, 0),
            Compare::Difference(3, 0),
            Compare::Difference(1, 0),
        ]);
    for (payload, name, in_flight) in [(64, "64 B", 1), (1024, "1 KiB", 1), (1024, "1 KiB", 64)] {
        let case = format!("{payload}b-{in_flight}");
        let mut single = Vec::new();
        let mut cross = Vec::new();
        for n in lengths {
            single.push(single_run(relay, profiles, &case, n, payload, in_flight).await?);
            cross.push(cross_run(relay, profiles, &case, n, payload, in_flight).await?);
        }
        // Two relayed messages per round trip.
        let messages = (2 * (lengths[1] - lengths[0])) as f64;
        let per = |runs: &[Phase], i: usize| (runs[1][i] as f64 - runs[0][i] as f64) / messages;
        let (a, b) = (per(&cross, 0), per(&cross, 1));
        let cells = [per(&single, 0), a, b, a + b].map(|v| Some(Cell::number(v, 0)));
        let label = format!(
            "instructions per relayed message, {name}, {in_flight} in flight \
             ({} vs {} round trips)",
            lengths[0], lengths[1]
        );
        table.row(label, cells.into(), "");
    }
    Ok(table.to_markdown())
}

/// One relay under callgrind: `n` round trips; its phase's instructions.
async fn single_run(
    relay: &Server,
    profiles: &Path,
    case: &str,
    n: u64,
    payload: usize,
    in_flight: usize,
) -> anyhow::Result<Phase> {
    let file = profiles.join(format!("cross-single-{case}-{n}"));
    let sample = valgrind::run(relay, Tool::Callgrind, &file, 2 * n, |port, marker| {
        workloads::round_trips(port, port, marker, n, payload, in_flight, false)
    })
    .await?;
    eprintln!(
        "cross count · single node · {case} · {n}: {} in {:.0} s",
        sample.total,
        sample.wall.as_secs_f64()
    );
    Ok(vec![sample.total])
}

/// The two-node cluster, both nodes under callgrind: `n` round trips from a mac on A to a
/// browser on B; the phase's instructions on A and on B.
async fn cross_run(
    relay: &Server,
    profiles: &Path,
    case: &str,
    n: u64,
    payload: usize,
    in_flight: usize,
) -> anyhow::Result<Phase> {
    let out = |node: &str| {
        PathBuf::from(format!(
            "{}.callgrind",
            profiles.join(format!("cross-{node}-{case}-{n}")).display()
        ))
    };
    let (out_a, out_b) = (out("a"), out("b"));
    valgrind::remove_callgrind_parts(&out_a);
    valgrind::remove_callgrind_parts(&out_b);
    let started = std::time::Instant::now();
    let (wrap_a, wrap_b) = (callgrind_wrapper(&out_a), callgrind_wrapper(&out_b));
    let mut cluster = Cluster::launch(relay, [&wrap_a, &wrap_b]).await?;
    let marker = Marker::of_both(cluster.a.pid(), cluster.b.pid());
    let (a, b) = (cluster.a.port, cluster.b.port);
    workloads::round_trips(a, b, marker, n, payload, in_flight, false).await?;
    anyhow::ensure!(cluster.b.stop(), "node B did not exit on SIGTERM");
    anyhow::ensure!(cluster.a.stop(), "node A did not exit on SIGTERM");
    let (phase_a, _) = callgrind_phase(&out_a)?;
    let (phase_b, _) = callgrind_phase(&out_b)?;
    eprintln!(
        "cross count · cross-node · {case} · {n}: A {phase_a}, B {phase_b} in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(vec![phase_a, phase_b])
}
