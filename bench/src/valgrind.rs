//! One counted run: a server started under a valgrind tool (callgrind or dhat) on one
//! worker thread, driven, stopped with SIGTERM so the tool writes its output, and the
//! tool's totals read back. Under callgrind the workload's measured phase is cut out with
//! two dumps (`callgrind_control --dump`), so start-up, connecting and closing stay out.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::target::Server;

/// The valgrind tool a run is made under.
#[derive(Clone, Copy, PartialEq)]
pub enum Tool {
    /// Instructions executed (`Ir`).
    Callgrind,
    /// Heap blocks and bytes allocated.
    Dhat,
}

/// Marks the start and the end of a workload's measured phase on the servers' profiles.
#[derive(Clone, Copy)]
pub struct Marker {
    /// The callgrind processes to dump (a cluster's two nodes, or one server); none
    /// (dhat): marks do nothing.
    callgrind_pids: [Option<u32>; 2],
}

impl Marker {
    /// Marks the one server `pid` (none: marks do nothing).
    pub fn of(pid: Option<u32>) -> Self {
        Self {
            callgrind_pids: [pid, None],
        }
    }

    /// Marks both nodes of a cluster, each running under callgrind.
    pub fn of_both(a: u32, b: u32) -> Self {
        Self {
            callgrind_pids: [Some(a), Some(b)],
        }
    }

    /// Lets the servers go quiet, then (under callgrind) dumps each one's counters so far
    /// into a part file of their own and zeroes them.
    pub async fn mark(self) -> anyhow::Result<()> {
        if self.callgrind_pids.iter().all(Option::is_none) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        for pid in self.callgrind_pids.into_iter().flatten() {
            let status = tokio::process::Command::new("callgrind_control")
                .args(["--dump", &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await
                .context("cannot run callgrind_control")?;
            anyhow::ensure!(status.success(), "callgrind_control --dump {pid} failed");
        }
        Ok(())
    }
}

/// What one server process did and cost.
pub struct Sample {
    /// Units of work done (messages or pairings).
    pub units: u64,
    /// What is compared: instructions in the measured phase (callgrind), or heap blocks
    /// allocated over the whole run (dhat).
    pub total: u64,
    /// Instructions, or heap blocks, over the whole run.
    pub whole: u64,
    /// Heap bytes allocated over the whole run (dhat only).
    pub bytes: u64,
    /// The measured phase's length, as the workload reports it.
    pub phase: Duration,
    /// Wall time from start to exit.
    pub wall: Duration,
}

/// Starts `server` under `tool` with its output at `file` (plus an extension), lets
/// `drive` work it through its port (marking its measured phase), stops it and reads the
/// totals. `units` is the amount of work `drive` does; `drive` returns the phase's length.
pub async fn run<F, Fut>(
    server: &Server,
    tool: Tool,
    file: &Path,
    units: u64,
    drive: F,
) -> anyhow::Result<Sample>
where
    F: FnOnce(u16, Marker) -> Fut,
    Fut: Future<Output = anyhow::Result<Duration>>,
{
    let with = |ext: &str| PathBuf::from(format!("{}.{ext}", file.display()));
    let (name, out, flag) = match tool {
        Tool::Callgrind => ("callgrind", with("callgrind"), "--callgrind-out-file"),
        Tool::Dhat => ("dhat", with("dhat.json"), "--dhat-out-file"),
    };
    remove_callgrind_parts(&out);
    let wrapper = [
        "valgrind".to_owned(),
        format!("--tool={name}"),
        format!("{flag}={}", out.display()),
        format!("--log-file={}", with("log").display()),
    ];
    let started = Instant::now();
    let mut target = server.launch(&wrapper, true)?;
    let marker = Marker::of((tool == Tool::Callgrind).then(|| target.pid()));
    let phase = drive(target.port, marker).await?;
    anyhow::ensure!(target.stop(), "the {} did not exit on SIGTERM", server.name);
    let (total, whole, bytes) = match tool {
        Tool::Callgrind => {
            let (phase, whole) = callgrind_phase(&out)?;
            (phase, whole, 0)
        }
        Tool::Dhat => {
            let (blocks, bytes) = dhat_totals(&out)?;
            (blocks, blocks, bytes)
        }
    };
    Ok(Sample {
        units,
        total,
        whole,
        bytes,
        phase,
        wall: started.elapsed(),
    })
}

/// The callgrind arguments that write the profile to `out` (and its log beside it).
pub fn callgrind_wrapper(out: &Path) -> Vec<String> {
    vec![
        "valgrind".to_owned(),
        "--tool=callgrind".to_owned(),
        format!("--callgrind-out-file={}", out.display()),
        format!("--log-file={}.log", out.display()),
    ]
}

/// The `Ir` of a callgrind run marked twice, with its output at `out`: (the measured
/// phase, the whole run). Callgrind writes the parts before, in and after the phase to
/// `OUT.1`, `OUT.2` and `OUT`.
pub fn callgrind_phase(out: &Path) -> anyhow::Result<(u64, u64)> {
    let parts = [1, 2]
        .map(|n| PathBuf::from(format!("{}.{n}", out.display())))
        .into_iter()
        .chain([out.to_owned()])
        .map(|p| callgrind_total(&p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((parts[1], parts.iter().sum()))
}

/// Removes what an earlier run left at `out` (see [`callgrind_phase`]).
pub fn remove_callgrind_parts(out: &Path) {
    for part in [".1", ".2", ""] {
        let _ = std::fs::remove_file(format!("{}{part}", out.display()));
    }
}

/// The total `Ir` of a callgrind output file (its `totals:` line, else `summary:`).
fn callgrind_total(path: &Path) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("no callgrind output at {}", path.display()))?;
    let line = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    };
    line("totals:")
        .or_else(|| line("summary:"))
        .with_context(|| format!("no totals in {}", path.display()))
}

/// Heap blocks and bytes allocated over the whole run, from dhat's JSON output: the sums of
/// `tbk` and `tb` over its program points.
fn dhat_totals(path: &Path) -> anyhow::Result<(u64, u64)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("no dhat output at {}", path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)?;
    let points = json["pps"].as_array().context("dhat output without pps")?;
    let sum = |key: &str| points.iter().filter_map(|p| p[key].as_u64()).sum();
    Ok((sum("tbk"), sum("tb")))
}
