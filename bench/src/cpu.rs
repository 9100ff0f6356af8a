//! CPU accounting of a measurement: the CPU seconds of every process sharing the machine at its
//! start ([`CpuMeter`]), and what each spent per answered request at its end
//! ([`CpuPerRequest`]).

use serde::Serialize;

use crate::procfs::{KernelHold, KernelThreads, MachineTicks, cpu_secs, cpu_secs_of};

/// CPU time (user + system) per answered request, by process, over a measurement: where the two
/// shared cores went. PostgreSQL and Redis are counted when they run on this machine.
#[derive(Debug, Clone, Serialize)]
pub struct CpuPerRequest {
    pub api_us: f64,
    pub postgres_us: Option<f64>,
    pub redis_us: Option<f64>,
    /// The workers, in the phases that run some.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_us: Option<f64>,
    /// The load generator (this process; in the end-to-end phases, also the hub's sink).
    pub generator_us: f64,
    /// The share (%) of the machine's CPU time its hypervisor gave to others meanwhile
    /// (`steal`): on a VM, what tells a slow minute from a slower build.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm_steal_pct: Option<f64>,
    /// Kernel threads that held a CPU for half a millisecond or more at a time meanwhile.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kernel_holds: Vec<KernelHold>,
}

impl CpuPerRequest {
    /// `api / [worker /] pg / redis / generator`, in µs, then the VM's steal and the kernel
    /// threads' long runs.
    pub fn summary(&self) -> String {
        let us = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
        let worker = self
            .worker_us
            .map_or(String::new(), |w| format!("{w:.0} / "));
        let steal = self
            .vm_steal_pct
            .map_or(String::new(), |p| format!("   steal {p:.0}%"));
        let kernel: String = self
            .kernel_holds
            .iter()
            .map(|h| format!(", {} {}x{:.1} ms", h.thread, h.runs, h.avg_ms))
            .collect();
        format!(
            "{} / {worker}{} / {} / {}{steal}{kernel}",
            us(Some(self.api_us)),
            us(self.postgres_us),
            us(self.redis_us),
            us(Some(self.generator_us))
        )
    }
}

/// The CPU seconds of the processes a measurement shares the machine with, when it started.
pub struct CpuMeter {
    api_pid: u32,
    api: f64,
    worker_pids: Vec<u32>,
    workers: f64,
    postgres: Option<f64>,
    redis: Option<f64>,
    generator: f64,
    machine: Option<MachineTicks>,
    kernel: KernelThreads,
}

impl CpuMeter {
    pub fn start(api_pid: u32) -> Self {
        Self::with_workers(api_pid, Vec::new())
    }

    pub fn with_workers(api_pid: u32, worker_pids: Vec<u32>) -> Self {
        Self {
            api_pid,
            api: cpu_secs(api_pid),
            workers: worker_pids.iter().map(|&pid| cpu_secs(pid)).sum(),
            worker_pids,
            postgres: cpu_secs_of("postgres"),
            redis: cpu_secs_of("redis-server"),
            generator: cpu_secs(std::process::id()),
            machine: MachineTicks::now(),
            kernel: KernelThreads::now(),
        }
    }

    pub fn per_request(&self, requests: usize) -> CpuPerRequest {
        let per = |secs: f64| secs * 1e6 / requests.max(1) as f64;
        let since = |then: Option<f64>, now: Option<f64>| Some(per(now? - then?));
        CpuPerRequest {
            api_us: per(cpu_secs(self.api_pid) - self.api),
            postgres_us: since(self.postgres, cpu_secs_of("postgres")),
            redis_us: since(self.redis, cpu_secs_of("redis-server")),
            worker_us: (!self.worker_pids.is_empty()).then(|| {
                per(self
                    .worker_pids
                    .iter()
                    .map(|&pid| cpu_secs(pid))
                    .sum::<f64>()
                    - self.workers)
            }),
            generator_us: per(cpu_secs(std::process::id()) - self.generator),
            vm_steal_pct: self
                .machine
                .zip(MachineTicks::now())
                .and_then(|(then, now)| now.steal_pct_since(then)),
            kernel_holds: KernelThreads::now().holds_since(&self.kernel),
        }
    }
}
