//! Queue drain: `--e2e-jobs` submitted first, then 1 or 2 workers started; the workers' jobs/s
//! alone, and what queueing and running the jobs cost PostgreSQL per job.

use serde::Serialize;
use sqlx::PgPool;

use super::end_to_end::submit_burst;
use crate::database::{reset_tables, wait_finished, wait_settled};
use crate::procfs::cpu_secs_of;
use crate::stack::{Stack, stop};

#[derive(Debug, Serialize)]
pub struct DrainResult {
    pub workers: usize,
    pub jobs: usize,
    pub jobs_per_sec: f64,
    /// What queueing the jobs cost PostgreSQL (the api's submits, no worker running) and what
    /// running them did (the workers' fetch, claim, completion, acknowledgement and the hub
    /// relay), per job: write-ahead log bytes, which do not depend on how busy the machine is,
    /// and CPU of the PostgreSQL processes, when the server runs on this machine.
    pub submit_cost: DbCost,
    pub run_cost: DbCost,
}

/// PostgreSQL's work per job over one phase.
#[derive(Debug, Serialize)]
pub struct DbCost {
    pub wal_bytes_per_job: f64,
    pub cpu_us_per_job: Option<f64>,
}

/// Where the database stood at the start of a phase (see [`DbCost`]).
struct DbMark {
    wal_lsn: String,
    cpu_secs: Option<f64>,
}

impl DbMark {
    async fn now(pool: &PgPool) -> anyhow::Result<Self> {
        let wal_lsn: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
            .fetch_one(pool)
            .await?;
        Ok(Self {
            wal_lsn,
            cpu_secs: cpu_secs_of("postgres"),
        })
    }

    async fn cost(&self, pool: &PgPool, jobs: usize) -> anyhow::Result<DbCost> {
        let wal_bytes: f64 = sqlx::query_scalar(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)::float8",
        )
        .bind(&self.wal_lsn)
        .fetch_one(pool)
        .await?;
        let jobs = jobs.max(1) as f64;
        Ok(DbCost {
            wal_bytes_per_job: wal_bytes / jobs,
            cpu_us_per_job: self
                .cpu_secs
                .zip(cpu_secs_of("postgres"))
                .map(|(before, after)| (after - before) * 1e6 / jobs),
        })
    }
}

/// The drain with 1, then 2 workers, each on empty tables.
pub async fn measure(stack: &Stack<'_>, pool: &PgPool) -> anyhow::Result<Vec<DrainResult>> {
    let mut drain = Vec::new();
    for workers in [1usize, 2] {
        let queued = DbMark::now(pool).await?;
        let total = submit_burst(stack, stack.args.e2e_jobs).await?;
        // The api's group-commit writers answer once their batch committed: nothing is left.
        let started = DbMark::now(pool).await?;
        let submit_cost = queued.cost(pool, total).await?;
        let mut children = Vec::new();
        for i in 0..workers {
            children.push(stack.worker(&format!("drain-{workers}-{i}"), &[])?);
        }
        wait_finished(pool, total).await?;
        // The acknowledgements and the outbox delivery follow the completing writes.
        wait_settled(pool).await?;
        let run_cost = started.cost(pool, total).await?;
        let (secs,): (f64,) = sqlx::query_as(
            "SELECT EXTRACT(EPOCH FROM (MAX(completed_at) - MIN(started_at)))::float8
             FROM generation_requests",
        )
        .fetch_one(pool)
        .await?;
        let r = DrainResult {
            workers,
            jobs: total,
            jobs_per_sec: total as f64 / secs,
            submit_cost,
            run_cost,
        };
        println!(
            "  drain, {workers} worker(s): {:.0} jobs/s; per job, submit {:.0} B WAL, run {:.0} B WAL",
            r.jobs_per_sec, r.submit_cost.wal_bytes_per_job, r.run_cost.wal_bytes_per_job
        );
        drain.push(r);
        for child in &mut children {
            stop(child).await;
        }
        reset_tables(pool).await?;
    }
    Ok(drain)
}
