//! The benchmark's own database: created fresh and migrated, emptied between phases, polled
//! until a phase's jobs are done, and dropped at the end.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use llm_shared::db;
use sqlx::PgPool;
use uuid::Uuid;

pub struct BenchDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl BenchDb {
    pub async fn create(admin_url: &str) -> anyhow::Result<Self> {
        let name = format!("llmbench_{}", Uuid::now_v7().simple());
        let admin = db::connect_url(admin_url, 1)
            .await
            .context("connecting to BENCH_DATABASE_URL")?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await?;
        admin.close().await;
        let (path, query) = admin_url.split_once('?').unwrap_or((admin_url, ""));
        let (base, _) = path
            .rsplit_once('/')
            .context("database URL without a path")?;
        let url = if query.is_empty() {
            format!("{base}/{name}")
        } else {
            format!("{base}/{name}?{query}")
        };
        let pool = db::connect_url(&url, 4).await?;
        db::migrate(&pool).await?;
        Ok(Self { name, url, pool })
    }

    /// The run's Redis namespace (`REDIS_KEY_PREFIX`), named after its database.
    pub fn redis_prefix(&self) -> String {
        format!("{}:", self.name)
    }

    pub async fn drop_it(self, admin_url: &str) {
        self.pool.close().await;
        if let Ok(admin) = db::connect_url(admin_url, 1).await {
            let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
            let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&admin).await;
        }
    }
}

/// Empties what the jobs of a phase wrote, so that each phase starts where the first one did:
/// requests (and their attempts), queue jobs, outbox events and cache entries. Left to grow,
/// the outbox and the cache would hold every earlier phase's rows, and the later phases would
/// run on tables larger than PostgreSQL's buffers.
pub async fn reset_tables(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("TRUNCATE generation_requests, apalis.jobs, outbox_events, response_cache CASCADE")
        .execute(pool)
        .await?;
    Ok(())
}

/// Waits (bounded) until `total` requests are final.
pub async fn wait_finished(pool: &PgPool, total: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let count = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql).fetch_one(pool);
    loop {
        // The poll shares the database with what it measures: it counts the unfinished rows
        // (through their partial index, fewer as the run goes on), not the finished ones
        // (counting those costs ~9 ms a poll at 10,000 jobs, 18 µs of PostgreSQL time per job).
        let unfinished =
            count("SELECT COUNT(*) FROM generation_requests WHERE completed_at IS NULL").await?;
        let done = if unfinished == 0 {
            count(
                "SELECT COUNT(*) FROM generation_requests WHERE status IN ('completed', 'failed')",
            )
            .await?
        } else {
            0
        };
        if done as usize >= total {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {done} of {total} jobs finished within 300 s ({unfinished} unfinished)");
        }
        // The figures come from the rows' timestamps, not from this poll: poll gently.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits (bounded) until every job is acknowledged and every event delivered to the hub.
pub async fn wait_settled(pool: &PgPool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left: i64 = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM apalis.jobs WHERE status NOT IN ('Done', 'Failed', 'Killed'))
                  + (SELECT COUNT(*) FROM outbox_events WHERE delivered_at IS NULL)",
        )
        .fetch_one(pool)
        .await?;
        if left == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{left} jobs or events still unsettled after 60 s");
        }
        // Counted in the phase's cost like the rest: poll gently (as `wait_finished` does).
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
