//! System metrics of the process, read when `/metrics` is scraped: the standard Prometheus
//! `process_*` family from `/proc/self` (CPU seconds, resident and virtual memory, open file
//! descriptors and their limit, threads, start time, network bytes) and the counts of the tokio
//! runtime serving the scrape (`llm_runtime_*`: workers, alive tasks, global queue depth).
//!
//! Read straight from `/proc`: the `prometheus` crate's `process` feature would bring `procfs`
//! and its dependency tree for the same few lines of parsing. A value that cannot be read (no
//! `/proc`, as off Linux) is left out of the scrape rather than shown as 0.
//!
//! The network bytes come from `/proc/self/net/dev`, which counts every interface of the
//! process's network namespace, loopback included: in a container that is the container's
//! traffic (its processes together), on a host without namespaces the whole host's.

use std::sync::Mutex;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, IntCounter, IntGauge};

/// Clock ticks per second of the times in `/proc/<pid>/stat` (`USER_HZ`): fixed at 100 by the
/// kernel's user ABI whatever its internal tick rate, as Prometheus' own process collectors
/// assume; reading it through `sysconf` would need `unsafe` for a constant.
const USER_HZ: f64 = 100.0;

/// The process's and its runtime's gauges and counters, refreshed at each collection.
pub struct SystemMetrics {
    cpu_seconds: Counter,
    resident_memory: Gauge,
    virtual_memory: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    threads: Gauge,
    start_time: Gauge,
    network_receive: IntCounter,
    network_transmit: IntCounter,
    runtime_workers: IntGauge,
    runtime_alive_tasks: IntGauge,
    runtime_global_queue: IntGauge,
    /// Held during a collection: the counters move by the difference to the last reading, so
    /// two scrapes at once must not both add it.
    reading: Mutex<()>,
}

impl std::fmt::Debug for SystemMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemMetrics").finish_non_exhaustive()
    }
}

impl Default for SystemMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl SystemMetrics {
    /// The metrics, unread until the first collection. Names are constants, so construction
    /// cannot fail.
    pub fn new() -> Self {
        Self {
            cpu_seconds: Counter::new(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
            )
            .unwrap_or_else(|_| super::unreachable_metric()),
            resident_memory: gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
            ),
            virtual_memory: gauge(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
            ),
            open_fds: gauge("process_open_fds", "Number of open file descriptors."),
            max_fds: gauge(
                "process_max_fds",
                "Maximum number of open file descriptors (the soft limit).",
            ),
            threads: gauge("process_threads", "Number of OS threads in the process."),
            start_time: gauge(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
            ),
            network_receive: int_counter(
                "process_network_receive_bytes_total",
                "Bytes received on every interface of the process's network namespace (loopback included).",
            ),
            network_transmit: int_counter(
                "process_network_transmit_bytes_total",
                "Bytes sent on every interface of the process's network namespace (loopback included).",
            ),
            runtime_workers: int_gauge(
                "llm_runtime_workers",
                "Worker threads of the tokio runtime serving this process's scrape.",
            ),
            runtime_alive_tasks: int_gauge(
                "llm_runtime_alive_tasks",
                "Tasks alive in the tokio runtime (spawned and not finished).",
            ),
            runtime_global_queue: int_gauge(
                "llm_runtime_global_queue_depth",
                "Tasks waiting in the tokio runtime's global (injection) queue.",
            ),
            reading: Mutex::new(()),
        }
    }

    fn all(&self) -> [&dyn Collector; 12] {
        [
            &self.cpu_seconds,
            &self.resident_memory,
            &self.virtual_memory,
            &self.open_fds,
            &self.max_fds,
            &self.threads,
            &self.start_time,
            &self.network_receive,
            &self.network_transmit,
            &self.runtime_workers,
            &self.runtime_alive_tasks,
            &self.runtime_global_queue,
        ]
    }

    /// Reads `/proc` and the runtime; returns the metrics read (the others are left out).
    fn read(&self) -> Vec<&dyn Collector> {
        let mut read: Vec<&dyn Collector> = Vec::with_capacity(12);
        if let Some(stat) = proc_file("stat").as_deref().and_then(parse_stat) {
            advance(&self.cpu_seconds, stat.cpu_seconds);
            self.virtual_memory.set(stat.virtual_bytes);
            self.threads.set(stat.threads);
            read.extend([
                &self.cpu_seconds as &dyn Collector,
                &self.virtual_memory,
                &self.threads,
            ]);
            let boot = std::fs::read_to_string("/proc/stat")
                .ok()
                .as_deref()
                .and_then(parse_boot_time);
            if let Some(boot) = boot {
                self.start_time.set(boot + stat.start_ticks / USER_HZ);
                read.push(&self.start_time);
            }
        }
        if let Some(rss) = proc_file("status").as_deref().and_then(parse_resident) {
            self.resident_memory.set(rss);
            read.push(&self.resident_memory);
        }
        if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
            // The directory's own descriptor, open while it is read, is counted too: as in
            // Prometheus' collectors, the count is of the process as the scrape finds it.
            self.open_fds.set(entries.count() as f64);
            read.push(&self.open_fds);
        }
        if let Some(limit) = proc_file("limits").as_deref().and_then(parse_max_fds) {
            self.max_fds.set(limit);
            read.push(&self.max_fds);
        }
        if let Some((received, sent)) = proc_file("net/dev").as_deref().and_then(parse_net_dev) {
            advance_int(&self.network_receive, received);
            advance_int(&self.network_transmit, sent);
            read.extend([
                &self.network_receive as &dyn Collector,
                &self.network_transmit,
            ]);
        }
        // The runtime driving the scrape: the process's own (the api's and the worker's
        // binaries serve `/metrics` on their only runtime).
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let runtime = handle.metrics();
            self.runtime_workers.set(saturate(runtime.num_workers()));
            self.runtime_alive_tasks
                .set(saturate(runtime.num_alive_tasks()));
            self.runtime_global_queue
                .set(saturate(runtime.global_queue_depth()));
            read.extend([
                &self.runtime_workers as &dyn Collector,
                &self.runtime_alive_tasks,
                &self.runtime_global_queue,
            ]);
        }
        read
    }
}

impl Collector for SystemMetrics {
    fn desc(&self) -> Vec<&Desc> {
        self.all().into_iter().flat_map(|c| c.desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one_at_a_time = self
            .reading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.read().into_iter().flat_map(|c| c.collect()).collect()
    }
}

/// What `/proc/self/stat` says of the process.
#[derive(Debug, Clone, PartialEq)]
pub struct Stat {
    pub cpu_seconds: f64,
    pub threads: f64,
    /// Clock ticks from boot to the process's start.
    pub start_ticks: f64,
    pub virtual_bytes: f64,
}

/// Parses `/proc/<pid>/stat`. The command name (2nd field) is in parentheses and may hold
/// spaces and parentheses itself, so fields are counted from after the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    // Field 3 (state) is index 0 here: utime 14, stime 15, num_threads 20, starttime 22,
    // vsize 23 (proc(5)).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse().ok() };
    Some(Stat {
        cpu_seconds: (field(14)? + field(15)?) / USER_HZ,
        threads: field(20)?,
        start_ticks: field(22)?,
        virtual_bytes: field(23)?,
    })
}

/// `VmRSS` of `/proc/<pid>/status`, in bytes (the file says kB).
pub fn parse_resident(text: &str) -> Option<f64> {
    let kb: f64 = text
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024.0)
}

/// The soft limit of `Max open files` in `/proc/<pid>/limits` (`None` when unlimited).
pub fn parse_max_fds(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `btime` of `/proc/stat`: the boot time, in seconds since the epoch.
pub fn parse_boot_time(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// Bytes received and sent, summed over every interface of `/proc/<pid>/net/dev`.
pub fn parse_net_dev(text: &str) -> Option<(u64, u64)> {
    let mut totals = None;
    // Two header lines, then `iface: rx_bytes rx_packets ... (8 receive fields) tx_bytes ...`.
    for line in text.lines().skip(2) {
        let Some((_, counts)) = line.split_once(':') else {
            continue;
        };
        let counts: Vec<&str> = counts.split_whitespace().collect();
        let (Some(rx), Some(tx)) = (counts.first(), counts.get(8)) else {
            continue;
        };
        let (Ok(rx), Ok(tx)) = (rx.parse::<u64>(), tx.parse::<u64>()) else {
            continue;
        };
        let (sum_rx, sum_tx) = totals.unwrap_or((0u64, 0u64));
        totals = Some((sum_rx.saturating_add(rx), sum_tx.saturating_add(tx)));
    }
    totals
}

fn proc_file(name: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/self/{name}")).ok()
}

/// Moves a counter up to `now`: a counter only grows, so a reading below it (the kernel's
/// counts never go back, but an interface can vanish) leaves it where it is.
fn advance(counter: &Counter, now: f64) {
    let by = now - counter.get();
    if by > 0.0 {
        counter.inc_by(by);
    }
}

fn advance_int(counter: &IntCounter, now: u64) {
    let by = now.saturating_sub(counter.get());
    if by > 0 {
        counter.inc_by(by);
    }
}

fn saturate(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

fn gauge(name: &str, help: &str) -> Gauge {
    Gauge::new(name, help).unwrap_or_else(|_| super::unreachable_metric())
}

fn int_gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).unwrap_or_else(|_| super::unreachable_metric())
}

fn int_counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).unwrap_or_else(|_| super::unreachable_metric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name_however_odd_it_is() {
        let text = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194304 101 0 0 0 250 75 0 0 20 0 7 0 \
                    39194 3133440 417 18446744073709551615 0";
        let stat = parse_stat(text).unwrap();
        assert_eq!(
            stat,
            Stat {
                cpu_seconds: 3.25,
                threads: 7.0,
                start_ticks: 39194.0,
                virtual_bytes: 3_133_440.0,
            }
        );
        assert_eq!(parse_stat("4242 (truncated"), None);
        assert_eq!(parse_stat("4242 (x) S 1 2"), None);
    }

    #[test]
    fn status_limits_boot_time_and_net_dev_are_read() {
        assert_eq!(
            parse_resident("Name:\tx\nVmSize:\t 3892 kB\nVmRSS:\t    1976 kB\n"),
            Some(1976.0 * 1024.0)
        );
        assert_eq!(parse_resident("Name:\tkthread\n"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             63704                63704                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_max_fds(limits), Some(1024.0));
        assert_eq!(
            parse_max_fds(
                "Max open files            unlimited            unlimited            files"
            ),
            None
        );
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nbtime 1796596621\nprocesses 9\n"),
            Some(1_796_596_621.0)
        );
        let net = "Inter-|   Receive                                                |  Transmit\n \
                   face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
                   lo:  561560    3374    0    0    0     0          0         0   561560    3374    0    0    0     0       0          0\n  \
                   eth0: 100 1 0 0 0 0 0 0 20 1 0 0 0 0 0 0\n";
        assert_eq!(parse_net_dev(net), Some((561_660, 561_580)));
        assert_eq!(parse_net_dev("Inter-|\n face |\n"), None);
    }

    #[test]
    fn counters_never_go_back() {
        let counter = Counter::new("c", "c").unwrap();
        advance(&counter, 2.5);
        advance(&counter, 1.0);
        assert_eq!(counter.get(), 2.5);
        let bytes = IntCounter::new("b", "b").unwrap();
        advance_int(&bytes, 10);
        advance_int(&bytes, 4);
        advance_int(&bytes, 12);
        assert_eq!(bytes.get(), 12);
    }

    #[tokio::test]
    async fn this_process_and_its_runtime_are_collected() {
        let registry = prometheus::Registry::new();
        registry.register(Box::new(SystemMetrics::new())).unwrap();
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
        };
        assert!(value("process_resident_memory_bytes").unwrap() > 1_048_576.0);
        assert!(value("process_open_fds").unwrap() > 0.0);
        assert!(value("process_threads").unwrap() >= 1.0);
        assert_eq!(
            value("llm_runtime_workers"),
            Some(1.0),
            "current-thread runtime"
        );
        assert!(value("llm_runtime_alive_tasks").is_some());
        assert_eq!(SystemMetrics::new().desc().len(), 12);
    }
}
