//! The `cross` scenario (issue 11): the latency and throughput scenarios, in one run, on
//! one relay (no cluster), on a two-node cluster with both sides on node A, and across
//! the cluster — mac on A, browser on B, every message through Redis pub/sub — with the
//! CPU time of both nodes and of Redis, so the extra hop's cost is named where it is paid.
//! Only the relay under test is measured: the baseline has no cluster.

use crate::cluster::{redis_pid, Cluster};
use crate::cost::Cost;
use crate::load::Ends;
use crate::scenarios::{self, Latency, Throughput};
use crate::table::{Cell, Compare, Table};
use crate::target::Server;

/// The columns, in order.
const COLUMNS: [&str; 3] = ["single node", "cluster, same node", "cross-node"];
const SINGLE: usize = 0;
const SAME: usize = 1;
const CROSS: usize = 2;

/// Where one column's load goes: a server (or cluster) started fresh for each scenario.
#[derive(Clone, Copy)]
enum Setup {
    /// One relay, no cluster settings; the cost counts it and Redis (idle but for other
    /// users of it: its figure is the background).
    Single,
    /// Both sides on node A of a cluster.
    SameNode,
    /// Macs on node A, browsers on node B.
    Across,
}

const SETUPS: [Setup; 3] = [Setup::Single, Setup::SameNode, Setup::Across];

/// What a scenario needs running while it is measured.
enum Running {
    Single(crate::target::Target, u32),
    Cluster(Cluster, Setup),
}

impl Running {
    async fn start(relay: &Server, setup: Setup) -> anyhow::Result<Self> {
        Ok(match setup {
            Setup::Single => Self::Single(relay.start()?, redis_pid()?),
            _ => Self::Cluster(Cluster::start(relay).await?, setup),
        })
    }

    /// Where the load goes, and the processes counted: [relay or A, B, Redis], where the
    /// single relay has no B.
    fn ends(&self) -> Ends {
        match self {
            Self::Single(target, redis) => Ends {
                pids: vec![target.pid(), *redis],
                ..Ends::single(target)
            },
            Self::Cluster(cluster, Setup::SameNode) => cluster.same_node(),
            Self::Cluster(cluster, _) => cluster.across(),
        }
    }
}

/// Runs the scenario on `relay` and returns its Markdown table.
pub async fn run(relay: &Server, quick: bool) -> anyhow::Result<String> {
    let scale = |full: u64, small: u64| if quick { small } else { full };
    let mut table = Table::new("scenario", COLUMNS.to_vec(), true).comparing(vec![
        Compare::Ratio(CROSS, SINGLE),
        Compare::Difference(CROSS, SINGLE),
        Compare::Difference(CROSS, SAME),
    ]);

    let load_at_start = load_average();
    let secs = scale(10, 3);
    // The target's rate, then a tenth of it: whether what the hop adds to the tail grows
    // with the load (queueing on the shared cores) or is there at any rate. At the
    // target's rate the three setups run in several rounds, one after the other in each
    // (in the reverse order every other round), and each figure is the median over the
    // rounds: a stall of the shared machine lands in one column of one round, and moves
    // that round only.
    for (rate, rounds, target) in [
        (100u32, scale(5, 1) as usize, "cross − single ≤ +1000"),
        (10, 1, ""),
    ] {
        // [round][setup], in `SETUPS` order.
        let mut lat: Vec<Vec<Latency>> = Vec::new();
        for round in 0..rounds {
            let mut order: Vec<usize> = (0..SETUPS.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            let mut this: Vec<Option<Latency>> = SETUPS.iter().map(|_| None).collect();
            for i in order {
                let running = Running::start(relay, SETUPS[i]).await?;
                this[i] = Some(scenarios::latency(&running.ends(), 100, rate, secs).await?);
            }
            lat.push(this.into_iter().map(Option::unwrap).collect());
        }
        let column = |setup: usize| lat.iter().map(move |round| &round[setup]);
        let samples: Vec<String> = (0..SETUPS.len())
            .map(|s| column(s).map(|l| l.samples).sum::<usize>().to_string())
            .collect();
        let wrong: Vec<String> = (0..SETUPS.len())
            .map(|s| {
                column(s)
                    .map(|l| l.out_of_sequence)
                    .sum::<u64>()
                    .to_string()
            })
            .collect();
        let of_rounds = if rounds > 1 {
            format!("; median of {rounds} rounds")
        } else {
            String::new()
        };
        for (name, pick, target) in [
            ("p50", (|l: &Latency| l.p50) as fn(&Latency) -> u64, ""),
            ("p90", |l| l.p90, ""),
            // With rounds, the target is judged on their differences (the row below).
            ("p99", |l| l.p99, if rounds > 1 { "" } else { target }),
            ("p99.9", |l| l.p999, ""),
            ("max", |l| l.max, ""),
        ] {
            let label = format!(
                "latency {name}, 100 pairs × {rate} msg/s × {secs} s, 64 B (µs{of_rounds}; \
                 {} samples of {}, {} out of sequence)",
                samples.join(" / "),
                100 * rate as u64 * secs * rounds as u64,
                wrong.join(" / ")
            );
            let cells = (0..SETUPS.len()).map(|s| {
                let value = median(column(s).map(pick).collect());
                Some(Cell::number(value as f64, 0))
            });
            table.row(label, cells.collect(), target);
        }
        if rounds > 1 {
            // What each round added, so a run's spread is in the report beside its median.
            let added = |setup: usize| {
                let each: Vec<i64> = lat
                    .iter()
                    .map(|round| round[setup].p99 as i64 - round[SINGLE].p99 as i64)
                    .collect();
                let listed: Vec<String> = each.iter().map(|d| format!("{d:+}")).collect();
                let middle = median(each);
                format!("{} (median {middle:+})", listed.join(", "))
            };
            table.row(
                format!(
                    "↳ p99 − single node's p99, round by round (µs): cross-node {}; same node {}",
                    added(CROSS),
                    added(SAME)
                ),
                vec![None, None, None],
                "cross-node median ≤ +1000",
            );
        }
        let costs: Vec<Cost> = (0..SETUPS.len())
            .map(|s| Cost::sum(column(s).map(|l| &l.cost)))
            .collect();
        cost_rows(&mut table, costs.iter().collect());
    }

    for (pairs, window) in [(1u32, 64usize), (100, 8)] {
        let secs = scale(5, 2);
        let mut rates: Vec<Throughput> = Vec::new();
        for setup in SETUPS {
            let running = Running::start(relay, setup).await?;
            rates.push(scenarios::throughput(&running.ends(), pairs, window, secs).await?);
        }
        let label = format!("throughput, {pairs} pair(s), 1 KiB, window {window} (msg/s; MB/s)");
        let cells = rates.iter().map(|r| {
            let text = format!(
                "{:.0} ({:.1} MB/s)",
                r.per_second,
                r.per_second * 1024.0 / 1e6
            );
            Some(Cell::with_text(r.per_second, text))
        });
        table.row(label, cells.collect(), "cross / single ≥ 0.5");
        cost_rows(&mut table, rates.iter().map(|r| &r.cost).collect());
    }
    Ok(format!(
        "{}\nLoad average (1, 5, 15 min) at the start: {load_at_start}; at the end: {}.\n",
        table.to_markdown(),
        load_average()
    ))
}

/// The middle of `values` (the lower of the two middle ones when there are an even number).
fn median<T: Ord + Copy + Default>(mut values: Vec<T>) -> T {
    values.sort_unstable();
    values
        .get(values.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or_default()
}

/// `/proc/loadavg`'s first three fields: how busy the shared machine was, for the report.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The cost rows under a scenario: the total over the relay processes and Redis, then each
/// process, then the load generator. `costs` follow [`SETUPS`].
fn cost_rows(table: &mut Table, costs: Vec<&Cost>) {
    // Which of a cost's processes is node A, node B and Redis, per setup.
    let index = |setup: Setup, part: usize| match (setup, part) {
        (Setup::Single, 1) => None,
        (Setup::Single, 2) => Some(1),
        (_, part) => Some(part),
    };
    let total = costs.iter().zip(SETUPS).map(|(cost, setup)| {
        let part = |p| {
            index(setup, p).map_or("–".into(), |i| {
                format!("{:.1}", cost.process_us_per_message(i))
            })
        };
        let text = format!(
            "{:.1} ({} + {} + {})",
            cost.server_us_per_message(),
            part(0),
            part(1),
            part(2)
        );
        Some(Cell::with_text(cost.server_us_per_message(), text))
    });
    table.row(
        "↳ CPU-µs per relayed message, relay processes + Redis (A + B + Redis)",
        total.collect(),
        "",
    );
    for (part, name) in ["node A (single: the relay)", "node B", "Redis"]
        .into_iter()
        .enumerate()
    {
        // The single relay has no node B: its share there is nothing, shown as "–".
        let cells = costs.iter().zip(SETUPS).map(|(cost, setup)| {
            Some(
                index(setup, part).map_or(Cell::with_text(0.0, "–".into()), |i| {
                    Cell::number(cost.process_us_per_message(i), 1)
                }),
            )
        });
        table.row(format!("↳ of which {name}"), cells.collect(), "");
    }
    let load = costs.iter().map(|cost| {
        let per_message = if cost.messages == 0 {
            0.0
        } else {
            cost.load_s * 1e6 / cost.messages as f64
        };
        let text = format!("{per_message:.1} ({:.2} s)", cost.load_s);
        Some(Cell::with_text(per_message, text))
    });
    table.row(
        "↳ load generator CPU-µs per relayed message (CPU s in the window)",
        load.collect(),
        "",
    );
}
