//! The counted mode's report: the per-unit table (relay, before, baseline and their ratios)
//! and every run's totals, so each figure can be checked by hand.

use std::fmt::Write as _;

use crate::count::{Counted, Measure};
use crate::table::{Cell, Table};
use crate::target::Server;
use crate::valgrind::Tool;

/// The per-unit table. A measure with a held run also shows its figure less the
/// background work, and that background work per second.
pub(crate) fn summary(servers: &[Server], results: &[(Measure, Vec<Option<Counted>>)]) -> String {
    let mut table = Table::new("measure", servers.iter().map(|s| s.name).collect(), false);
    for (measure, counted) in results {
        // Allocations are a few per message: show them finely.
        let decimals = if measure.tool == Tool::Dhat { 2 } else { 0 };
        // One cell per server; none where a server did not run the measure.
        let cells = |value: &dyn Fn(&Counted) -> Option<f64>, decimals: usize| {
            let cell = |c: &Option<Counted>| c.as_ref().and_then(value);
            let cells = counted.iter().map(cell);
            cells
                .map(|v| v.map(|v| Cell::number(v, decimals)))
                .collect()
        };
        let per_unit = |c: &Counted| Some(c.per_unit(|s| s.total));
        table.row(measure.label.clone(), cells(&per_unit, decimals), "");
        if measure.tool == Tool::Dhat {
            let label = measure.label.replace("allocations", "bytes allocated");
            table.row(label, cells(&|c| Some(c.per_unit(|s| s.bytes)), 0), "");
        }
        if measure.hold.is_some() {
            let label = format!("{}, less background work", measure.label);
            table.row(label, cells(&Counted::per_unit_less_background, 0), "");
            let label = measure.label.replace(
                "instructions per pairing",
                "background instructions per second",
            );
            table.row(label, cells(&Counted::background_per_second, 0), "");
        }
    }
    table.to_markdown()
}

/// Every run's totals, so each figure can be checked by hand.
pub(crate) fn details(servers: &[Server], results: &[(Measure, Vec<Option<Counted>>)]) -> String {
    let mut out = String::from(
        "| measure | server | length | units | phase total | whole run | phase s | wall s |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for (measure, counted) in results {
        for (server, c) in servers.iter().zip(counted) {
            let Some(c) = c else { continue };
            let mut runs = vec![(measure.lengths[0].to_string(), &c.short)];
            runs.push((measure.lengths[1].to_string(), &c.long));
            if let (Some(secs), Some(held)) = (measure.hold, &c.held) {
                runs.push((format!("0 + {secs} s idle"), held));
            }
            for (n, s) in runs {
                let _ = writeln!(
                    out,
                    "| {} | {} | {n} | {} | {} | {} | {:.1} | {:.0} |",
                    measure.label,
                    server.name,
                    s.units,
                    s.total,
                    s.whole,
                    s.phase.as_secs_f64(),
                    s.wall.as_secs_f64()
                );
            }
        }
    }
    out
}
