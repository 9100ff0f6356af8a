//! The machine the benchmark runs on (CPU model, cores, memory) and how the stack reaches
//! PostgreSQL: the first line of the report.

use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Machine {
    cpu: String,
    cores: usize,
    memory_gib: f64,
    /// How the stack's database connections use TLS (`sslmode`; sqlx's default is `prefer`).
    database_sslmode: String,
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} cores, {:.0} GiB, {}; PostgreSQL sslmode={}",
            self.cores, self.memory_gib, self.cpu, self.database_sslmode
        )
    }
}

/// The machine, and how the stack reaches PostgreSQL (`database_url`'s `sslmode`).
pub fn machine(database_url: &str) -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let database_sslmode = database_url
        .split_once('?')
        .and_then(|(_, query)| {
            query
                .split('&')
                .find_map(|pair| pair.strip_prefix("sslmode="))
        })
        .unwrap_or("prefer")
        .to_owned();
    Machine {
        cpu,
        cores,
        memory_gib,
        database_sslmode,
    }
}
