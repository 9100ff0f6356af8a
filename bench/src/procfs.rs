//! Readers of `/proc`: the machine's processes, a process's resident memory and CPU seconds,
//! the machine's CPU ticks (and what the hypervisor stole), and the kernel threads that held a
//! CPU for long.

use std::time::Duration;

use serde::Serialize;

/// The machine's processes (`/proc`): none if it cannot be read.
pub fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
}

fn proc_status(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default()
}

pub fn rss_mb(pid: u32) -> f64 {
    proc_status(pid)
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// User + system CPU seconds of a process and of its children that exited.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the name; cutime and
    // cstime (13 and 14 after it) are those of its children that exited, so that a server's
    // CPU includes the backends that ended during a measurement.
    (ticks(11) + ticks(12) + ticks(13) + ticks(14)) / 100.0
}

/// User + system CPU seconds of every process of this machine named `name` (with their exited
/// children), if there are any: PostgreSQL's or Redis' server may run elsewhere.
pub fn cpu_secs_of(name: &str) -> Option<f64> {
    let mut total = None;
    for pid in pids() {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim_end() == name {
            *total.get_or_insert(0.0) += cpu_secs(pid);
        }
    }
    total
}

/// The machine's CPU time so far (`/proc/stat`, clock ticks): all of it, and what the
/// hypervisor stole.
#[derive(Clone, Copy)]
pub struct MachineTicks {
    total: u64,
    steal: u64,
}

impl MachineTicks {
    pub fn now() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        // cpu user nice system idle iowait irq softirq steal (guest time is within user)
        let ticks: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|v| v.parse().ok())
            .collect();
        (ticks.len() == 8).then(|| Self {
            total: ticks.iter().sum(),
            steal: ticks[7],
        })
    }

    /// The stolen share (%) of the time since `then`.
    pub fn steal_pct_since(self, then: Self) -> Option<f64> {
        let total = self.total.checked_sub(then.total).filter(|&t| t > 0)?;
        Some(self.steal.saturating_sub(then.steal) as f64 * 100.0 / total as f64)
    }
}

/// A kernel thread that held a CPU for [`KernelThreads::HOLD`] or more at a time, on average,
/// during a measurement. On a kernel built without preemption (`PREEMPT_NONE`) nothing else
/// runs on that CPU until it yields, so whatever waits for a thread queued there waits as long:
/// DAMON's `kdamond` (memory reclaim), for one, can hold a CPU for milliseconds at a time, and
/// every cache hit due meanwhile is late by as much.
#[derive(Debug, Clone, Serialize)]
pub struct KernelHold {
    pub thread: String,
    pub runs: u64,
    pub avg_ms: f64,
}

/// Each kernel thread's time on a CPU so far and in how many runs (`/proc/<pid>/schedstat`), by
/// pid: the children of `kthreadd` (pid 2).
pub struct KernelThreads(std::collections::HashMap<u32, KernelThread>);

struct KernelThread {
    name: String,
    on_cpu_ns: u64,
    runs: u64,
}

impl KernelThreads {
    const HOLD: Duration = Duration::from_micros(500);

    pub fn now() -> Self {
        let mut threads = std::collections::HashMap::new();
        for pid in pids() {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // pid (comm) state ppid ...: the name may hold spaces and parentheses.
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            if stat[close + 1..].split_whitespace().nth(1) != Some("2") {
                continue;
            }
            let Ok(schedstat) = std::fs::read_to_string(format!("/proc/{pid}/schedstat")) else {
                continue;
            };
            // on-CPU ns, waiting ns, runs
            let fields: Vec<u64> = schedstat
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            if let [on_cpu_ns, _, runs] = fields[..] {
                let name = stat[open + 1..close].to_owned();
                threads.insert(
                    pid,
                    KernelThread {
                        name,
                        on_cpu_ns,
                        runs,
                    },
                );
            }
        }
        Self(threads)
    }

    /// The threads whose runs since `then` lasted [`Self::HOLD`] or more on average, longest
    /// first.
    pub fn holds_since(&self, then: &Self) -> Vec<KernelHold> {
        let mut holds: Vec<KernelHold> = self
            .0
            .iter()
            .filter_map(|(pid, now)| {
                let before = then.0.get(pid)?;
                let runs = now.runs.checked_sub(before.runs).filter(|&r| r > 0)?;
                let avg =
                    Duration::from_nanos(now.on_cpu_ns.saturating_sub(before.on_cpu_ns) / runs);
                (avg >= Self::HOLD).then(|| KernelHold {
                    thread: now.name.clone(),
                    runs,
                    avg_ms: avg.as_secs_f64() * 1000.0,
                })
            })
            .collect();
        holds.sort_by(|a, b| b.avg_ms.total_cmp(&a.avg_ms));
        holds
    }
}
