//! The counted mode: instructions (callgrind) and allocations (dhat) per relayed message
//! and per pairing. Every figure is a difference of two runs of different lengths, each in
//! a fresh server process on one worker thread, so whatever both runs do alike cancels:
//! per unit = (total_long − total_short) / (units_long − units_short). Under callgrind
//! the totals are of the workload's measured phase only (see `valgrind.rs`).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::count_report as report;
use crate::target::Server;
use crate::valgrind::{self, Marker, Sample, Tool};
use crate::workloads;

/// What a measure drives the server with; a run of length `n` does `n` of its units.
#[derive(Clone, Copy)]
pub(crate) enum Work {
    /// One pair, `n` round trips of `payload`-byte messages, `in_flight` unanswered at most;
    /// `lossless`: both sides in lossless mode (hermit-relay builds only).
    RoundTrips {
        payload: usize,
        in_flight: usize,
        lossless: bool,
    },
    /// `n` complete pairings, one at a time, with `waiting` macs holding codes meanwhile.
    Pairings { waiting: u32 },
}

impl Work {
    /// Whether the work is in lossless mode, which only hermit-relay builds speak.
    fn lossless(self) -> bool {
        matches!(self, Work::RoundTrips { lossless: true, .. })
    }

    /// What a run of length `n` is counted in: relayed messages (two per round trip), or
    /// pairings.
    fn units(self, n: u64) -> u64 {
        match self {
            Work::RoundTrips { .. } => 2 * n,
            Work::Pairings { .. } => n,
        }
    }

    /// Does `n` units of work; pairings then keep the waiting macs open `hold` longer.
    async fn drive(
        self,
        port: u16,
        marker: Marker,
        n: u64,
        hold: Duration,
    ) -> anyhow::Result<Duration> {
        match self {
            Work::RoundTrips {
                payload,
                in_flight,
                lossless,
            } => workloads::round_trips(port, port, marker, n, payload, in_flight, lossless).await,
            Work::Pairings { waiting } => {
                workloads::pairings(port, marker, n as u32, waiting, hold).await
            }
        }
    }
}

/// One counted figure: a workload at two lengths, under one tool.
pub(crate) struct Measure {
    /// The `--only` group it belongs to.
    pub(crate) group: &'static str,
    pub(crate) label: String,
    pub(crate) tool: Tool,
    pub(crate) work: Work,
    /// Short and long run lengths (round trips or pairings).
    pub(crate) lengths: [u64; 2],
    /// Seconds of a third run: no pairings, the waiting macs idle this long (their timers).
    pub(crate) hold: Option<u64>,
}

fn measures(quick: bool) -> Vec<Measure> {
    let trips = if quick { [500, 3000] } else { [2000, 12000] };
    let pairings = if quick { [50, 300] } else { [200, 1200] };
    let hold = if quick { 15 } else { 60 };
    let waiting = if quick { 2000 } else { 10000 };
    let measure = |group, label: String, tool, work, lengths| Measure {
        group,
        label,
        tool,
        work,
        lengths,
        hold: None,
    };
    let mut list = Vec::new();
    for (payload, name) in [(1024, "1 KiB"), (64, "64 B")] {
        for in_flight in [1, 64] {
            let label = format!("instructions per relayed message, {name}, {in_flight} in flight");
            let work = Work::RoundTrips {
                payload,
                in_flight,
                lossless: false,
            };
            list.push(measure("messages", label, Tool::Callgrind, work, trips));
        }
    }
    // Lossless mode beside the plain rows: the baseline has none (its cells stay empty).
    for (tool, what, in_flight) in [
        (Tool::Callgrind, "instructions", 1),
        (Tool::Callgrind, "instructions", 64),
        (Tool::Dhat, "allocations", 1),
    ] {
        let label = format!(
            "{what} per relayed message, 1 KiB, {in_flight} in flight, lossless \
             (both sides ack every {} messages)",
            crate::lossless::ACK_EVERY
        );
        let work = Work::RoundTrips {
            payload: 1024,
            in_flight,
            lossless: true,
        };
        list.push(measure("lossless", label, tool, work, trips));
    }
    let label = "instructions per pairing".into();
    let work = Work::Pairings { waiting: 0 };
    list.push(measure("pairing", label, Tool::Callgrind, work, pairings));
    let label = format!("instructions per pairing, {waiting} macs waiting");
    let work = Work::Pairings { waiting };
    list.push(Measure {
        hold: Some(hold),
        ..measure("waiting", label, Tool::Callgrind, work, pairings)
    });
    let label = "allocations per relayed message, 1 KiB, 1 in flight".into();
    let work = Work::RoundTrips {
        payload: 1024,
        in_flight: 1,
        lossless: false,
    };
    list.push(measure("allocations", label, Tool::Dhat, work, trips));
    list
}

/// A measure on one server: its short and long runs (and the held one, if any).
pub(crate) struct Counted {
    pub(crate) short: Sample,
    pub(crate) long: Sample,
    pub(crate) held: Option<Sample>,
}

impl Counted {
    /// (long − short) of `pick`, per unit of work.
    pub(crate) fn per_unit(&self, pick: impl Fn(&Sample) -> u64) -> f64 {
        let extra = pick(&self.long) as f64 - pick(&self.short) as f64;
        extra / (self.long.units - self.short.units) as f64
    }

    /// Instructions per second the server spends with the waiting macs open and nothing
    /// else happening: the held run's measured phase, per second.
    pub(crate) fn background_per_second(&self) -> Option<f64> {
        let held = self.held.as_ref()?;
        Some(held.total as f64 / held.phase.as_secs_f64())
    }

    /// Instructions per unit less the background work the long run did only because it
    /// kept the waiting macs open longer (timers tick by the clock, not by the pairing).
    pub(crate) fn per_unit_less_background(&self) -> Option<f64> {
        let per_second = self.background_per_second()?;
        let longer = self
            .long
            .phase
            .saturating_sub(self.short.phase)
            .as_secs_f64();
        let extra = self.long.total as f64 - self.short.total as f64;
        Some((extra - per_second * longer) / (self.long.units - self.short.units) as f64)
    }
}

/// Runs the counted measures (all, or the `only` group or measure, by its label) on `servers`, keeping the
/// profiles in `profiles`, and returns the Markdown report.
pub async fn count_all(
    servers: &[Server],
    quick: bool,
    only: Option<&str>,
    profiles: &Path,
) -> anyhow::Result<String> {
    // Cross-node counts only when asked for: they need Redis and PostgreSQL, and count
    // the relay alone (`count_cross.rs`).
    if only == Some("cross") {
        let relay = servers.iter().find(|s| s.is_relay()).context("no relay")?;
        return crate::count_cross::count(relay, quick, profiles).await;
    }
    std::fs::create_dir_all(profiles)?;
    let started = Instant::now();
    let mut results = Vec::new();
    for measure in measures(quick)
        .into_iter()
        .filter(|m| only.is_none_or(|o| o == m.group || o == m.label))
    {
        let mut counted = Vec::new();
        for server in servers {
            if measure.work.lossless() && !server.is_relay() {
                counted.push(None);
                continue;
            }
            let [short, long] = measure.lengths;
            let short_run = count_one(server, &measure, short, 0, profiles).await?;
            let long_run = count_one(server, &measure, long, 0, profiles).await?;
            let held = match measure.hold {
                Some(secs) => Some(count_one(server, &measure, 0, secs, profiles).await?),
                None => None,
            };
            counted.push(Some(Counted {
                short: short_run,
                long: long_run,
                held,
            }));
        }
        results.push((measure, counted));
    }
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    Ok(format!(
        "{}\nRuns ({minutes:.1} min in all). Totals are `Ir`, or heap blocks for allocations; \
         the phase is the measured part of a run (all of it for allocations):\n\n{}",
        report::summary(servers, &results),
        report::details(servers, &results)
    ))
}

/// Starts `server` under the measure's tool and drives `n` units of work through it,
/// then `hold` idle seconds.
async fn count_one(
    server: &Server,
    measure: &Measure,
    n: u64,
    hold: u64,
    profiles: &Path,
) -> anyhow::Result<Sample> {
    let slug: String = (measure.label.chars())
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let run = if hold > 0 {
        format!("{n}-held-{hold}s")
    } else {
        n.to_string()
    };
    let file = profiles.join(format!("{}-{slug}-{run}", server.name));
    let work = measure.work;
    let hold = Duration::from_secs(hold);
    let sample = valgrind::run(
        server,
        measure.tool,
        &file,
        work.units(n),
        |port, marker| work.drive(port, marker, n, hold),
    )
    .await?;
    eprintln!(
        "{} · {} · {run}: {} in {:.0} s",
        measure.label,
        server.name,
        sample.total,
        sample.wall.as_secs_f64()
    );
    Ok(sample)
}
