//! What a measured window cost: the servers' and the load generator's CPU time, read from
//! `/proc/PID/stat` (utime + stime) at the window's start and end. "The server" may be
//! several processes (a cluster's nodes and its Redis): each is read, and their sum is the
//! server's cost.

use std::sync::OnceLock;

/// Clock ticks per second of the `/proc` CPU times (`sysconf(_SC_CLK_TCK)`, usually 100).
fn ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        // SAFETY: sysconf only reads a system constant.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if ticks > 0 {
            ticks as f64
        } else {
            100.0
        }
    })
}

/// CPU seconds (user + system, all threads) used so far by `pid`, or by this process.
/// Zero if the process is gone.
fn cpu_seconds(pid: Option<u32>) -> f64 {
    let path = pid.map_or("/proc/self/stat".into(), |p| format!("/proc/{p}/stat"));
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name (which may hold spaces, so split after its ')'):
    // state is field 3, utime field 14, stime field 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| {
        fields
            .get(n - 3)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field(14) + field(15)) as f64 / ticks_per_second()
}

/// The server processes' and the load generator's CPU clocks read at one instant: the
/// start of a measured window.
pub struct CpuMark {
    /// The server processes, in the order their costs are reported.
    server_pids: Vec<u32>,
    /// Their clocks at the mark, in that order.
    servers: Vec<f64>,
    load: f64,
}

impl CpuMark {
    /// Reads the clocks of the server `server_pid` and of this load generator now.
    pub fn now(server_pid: u32) -> Self {
        Self::of(&[server_pid])
    }

    /// Reads the clocks of every process in `server_pids` and of this load generator now.
    pub fn of(server_pids: &[u32]) -> Self {
        Self {
            server_pids: server_pids.to_vec(),
            servers: server_pids.iter().map(|&p| cpu_seconds(Some(p))).collect(),
            load: cpu_seconds(None),
        }
    }

    /// The cost of the window from this mark to now, in which `messages` were relayed.
    pub fn cost(&self, messages: u64) -> Cost {
        let servers: Vec<f64> = self
            .server_pids
            .iter()
            .zip(&self.servers)
            .map(|(&pid, at_mark)| cpu_seconds(Some(pid)) - at_mark)
            .collect();
        Cost {
            server_s: servers.iter().sum(),
            servers,
            load_s: cpu_seconds(None) - self.load,
            messages,
        }
    }
}

/// CPU time spent over a measured window, by the server and by the load generator.
pub struct Cost {
    /// Server CPU seconds in the window (the sum of `servers`).
    pub server_s: f64,
    /// Each server process's CPU seconds in the window, in the order they were marked.
    pub servers: Vec<f64>,
    /// Load generator CPU seconds in the window.
    pub load_s: f64,
    /// Messages relayed in the window (each direction counts one).
    pub messages: u64,
}

impl Cost {
    /// The cost of several windows of one setup, as one: their seconds and messages added.
    pub fn sum<'a>(costs: impl IntoIterator<Item = &'a Cost>) -> Cost {
        let mut total = Cost {
            server_s: 0.0,
            servers: Vec::new(),
            load_s: 0.0,
            messages: 0,
        };
        for cost in costs {
            total.server_s += cost.server_s;
            total.load_s += cost.load_s;
            total.messages += cost.messages;
            if total.servers.len() < cost.servers.len() {
                total.servers.resize(cost.servers.len(), 0.0);
            }
            for (sum, s) in total.servers.iter_mut().zip(&cost.servers) {
                *sum += s;
            }
        }
        total
    }

    /// Server CPU microseconds per relayed message.
    pub fn server_us_per_message(&self) -> f64 {
        self.per_message(self.server_s)
    }

    /// Server process `i`'s CPU microseconds per relayed message (0 if it was not marked).
    pub fn process_us_per_message(&self, i: usize) -> f64 {
        self.per_message(self.servers.get(i).copied().unwrap_or(0.0))
    }

    fn per_message(&self, seconds: f64) -> f64 {
        if self.messages == 0 {
            0.0
        } else {
            seconds * 1e6 / self.messages as f64
        }
    }

    /// The table cell: "µs per message (server s / load generator s)".
    pub fn describe(&self) -> String {
        format!(
            "{:.1} ({:.2} s / {:.2} s)",
            self.server_us_per_message(),
            self.server_s,
            self.load_s
        )
    }
}
