//! A Markdown table with one column per server and the ratios of the relay to the others
//! (relay / baseline, and relay / before when an older build was run too) — or, when
//! given, other comparisons between columns (ratios or differences).

use std::fmt::Write as _;

/// One figure: the number ratios are taken of, and how it is shown.
pub struct Cell {
    /// The value compared across servers.
    pub value: f64,
    /// What the table shows (the value, perhaps with details beside it).
    pub text: String,
}

impl Cell {
    /// A cell showing `value` with `decimals` decimals.
    pub fn number(value: f64, decimals: usize) -> Self {
        Self {
            value,
            text: format!("{value:.decimals$}"),
        }
    }

    /// A cell comparing `value` but showing `text`.
    pub fn with_text(value: f64, text: String) -> Self {
        Self { value, text }
    }
}

/// A column derived from two others, by their indices in the column order.
#[derive(Clone, Copy)]
pub enum Compare {
    /// The first over the second ("a / b").
    Ratio(usize, usize),
    /// The first less the second ("a − b"), in their unit.
    Difference(usize, usize),
}

struct Row {
    label: String,
    cells: Vec<Option<Cell>>,
    target: String,
}

/// Rows of figures, one cell per server in the order of `columns`.
pub struct Table {
    first: &'static str,
    columns: Vec<&'static str>,
    with_target: bool,
    /// Set by [`Table::comparing`]; otherwise the relay's ratios to the others.
    compare: Option<Vec<Compare>>,
    rows: Vec<Row>,
}

impl Table {
    /// A table whose first column is headed `first`, for the servers named in `columns`;
    /// `with_target` adds a "target" column.
    pub fn new(first: &'static str, columns: Vec<&'static str>, with_target: bool) -> Self {
        Self {
            first,
            columns,
            with_target,
            compare: None,
            rows: Vec::new(),
        }
    }

    /// The table with `compare` as its derived columns instead of the relay's ratios.
    pub fn comparing(mut self, compare: Vec<Compare>) -> Self {
        self.compare = Some(compare);
        self
    }

    /// Adds a row; `cells` follow the column order, `None` where a server has no figure.
    pub fn row(&mut self, label: impl Into<String>, cells: Vec<Option<Cell>>, target: &str) {
        self.rows.push(Row {
            label: label.into(),
            cells,
            target: target.to_owned(),
        });
    }

    fn comparisons(&self) -> Vec<Compare> {
        if let Some(compare) = &self.compare {
            return compare.clone();
        }
        let at = |name| self.columns.iter().position(|c| *c == name);
        let Some(relay) = at("relay") else {
            return Vec::new();
        };
        ["baseline", "before"]
            .into_iter()
            .filter_map(|other| at(other).map(|o| Compare::Ratio(relay, o)))
            .collect()
    }

    /// The table as Markdown.
    pub fn to_markdown(&self) -> String {
        let comparisons = self.comparisons();
        let mut head: Vec<String> = vec![self.first.into()];
        head.extend(self.columns.iter().map(|c| c.to_string()));
        head.extend(comparisons.iter().map(|&compare| match compare {
            Compare::Ratio(a, b) => format!("{} / {}", self.columns[a], self.columns[b]),
            Compare::Difference(a, b) => format!("{} − {}", self.columns[a], self.columns[b]),
        }));
        if self.with_target {
            head.push("target".into());
        }
        let mut out = String::new();
        let _ = writeln!(out, "| {} |", head.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(head.len()));
        for row in &self.rows {
            let mut line = vec![row.label.clone()];
            line.extend(
                (0..self.columns.len())
                    .map(|i| row.cells.get(i).and_then(Option::as_ref))
                    .map(|c| c.map_or("–".into(), |c| c.text.clone())),
            );
            let value = |i: usize| row.cells.get(i).and_then(Option::as_ref).map(|c| c.value);
            for &compare in &comparisons {
                line.push(match compare {
                    Compare::Ratio(a, b) => match (value(a), value(b)) {
                        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                        _ => "–".into(),
                    },
                    Compare::Difference(a, b) => match (value(a), value(b)) {
                        (Some(a), Some(b)) => format!("{:+.1}", a - b),
                        _ => "–".into(),
                    },
                });
            }
            if self.with_target {
                line.push(row.target.clone());
            }
            let _ = writeln!(out, "| {} |", line.join(" | "));
        }
        out
    }
}
