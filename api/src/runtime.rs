//! The api's async runtime: one worker thread per CPU the process may run on, each pinned to a
//! CPU of its own (`API_PIN_THREADS`).
//!
//! Why pin: on a small virtual machine the kernel may pack both runtime threads onto one CPU
//! while the other idles (`perf sched timehist` shows it), so they take turns there, and a
//! kernel thread that holds that CPU for milliseconds (a kernel built without preemption)
//! stalls every request at once. Pinned, each thread keeps a CPU of its own, and while one is
//! held up the other goes on taking work (tokio lets an idle worker steal a stalled one's
//! queued tasks): about 32,000 cache hits a second at 16 clients instead of 27,000 on 2 cores
//! (`llm-bench --cache-concurrency 16`, with and without `API_PIN_THREADS=false`).
//!
//! Only a runtime with exactly one thread per CPU of the process's affinity set is pinned: with
//! fewer threads (`TOKIO_WORKER_THREADS`, or a container's CPU quota, which sizes tokio's
//! default) a thread pinned to one CPU of many could not move off a busy one.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The runtime the api serves on: multi-threaded, each worker thread pinned to a CPU of its own
/// when `pin` and there is one thread per CPU this process may run on.
pub fn api_runtime(pin: bool) -> std::io::Result<tokio::runtime::Runtime> {
    let threads = worker_threads();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(threads).enable_all();
    if let Some(cpus) = cpus_to_pin(pin, threads) {
        let next = AtomicUsize::new(0);
        // Called by the worker threads alone (the blocking pool's threads never park there),
        // before each park: a thread pins itself the first time.
        builder.on_thread_park(move || {
            thread_local!(static PINNED: Cell<bool> = const { Cell::new(false) });
            PINNED.with(|pinned| {
                if !pinned.replace(true) {
                    let cpu = cpus[next.fetch_add(1, Ordering::Relaxed) % cpus.len()];
                    if !core_affinity::set_for_current(cpu) {
                        tracing::warn!(cpu = cpu.id, "could not pin a runtime thread to its CPU");
                    }
                }
            });
        });
    }
    builder.build()
}

/// The worker threads tokio would start: `TOKIO_WORKER_THREADS` if set, else one per CPU
/// available to the process (its affinity set and CPU quota).
fn worker_threads() -> usize {
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|n| n.trim().parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The CPUs to pin `threads` threads to, one each: the process's affinity set, if it holds
/// exactly that many CPUs (and more than one).
fn cpus_to_pin(pin: bool, threads: usize) -> Option<Vec<core_affinity::CoreId>> {
    if !pin || threads < 2 {
        return None;
    }
    core_affinity::get_core_ids().filter(|cpus| cpus.len() == threads)
}
