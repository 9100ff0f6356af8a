//! PostgreSQL: the pool and migrations (ours in `migrations/`, then apalis' own schema).

use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::config::CommonConfig;

/// Arbitrary but fixed key of the advisory lock that serialises migrations across processes.
const MIGRATION_LOCK_KEY: i64 = 0x6c6c_6d5f_6d69_6772; // "llm_migr"

pub async fn connect(config: &CommonConfig) -> Result<PgPool, sqlx::Error> {
    connect_url(
        config.database_url.expose_secret(),
        config.database_max_connections,
    )
    .await
}

pub async fn connect_url(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("database error while migrating: {0}")]
    Database(#[from] sqlx::Error),
    #[error("service migrations failed: {0}")]
    Service(#[from] sqlx::migrate::MigrateError),
    #[error("queue (apalis) migrations failed: {0}")]
    Queue(#[from] apalis_postgres::Error),
}

/// Brings the schema up to date. Safe to call from any number of processes at once: a
/// session-level advisory lock makes them take turns, and each migrator skips what is applied.
pub async fn migrate(pool: &PgPool) -> Result<(), MigrateError> {
    let mut lock_conn = pool.acquire().await?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATION_LOCK_KEY)
        .execute(&mut *lock_conn)
        .await?;
    let result = run_migrations(pool).await;
    let unlock = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(MIGRATION_LOCK_KEY)
        .execute(&mut *lock_conn)
        .await;
    result?;
    unlock?;
    Ok(())
}

async fn run_migrations(pool: &PgPool) -> Result<(), MigrateError> {
    // Ours first: the first one creates the hstore extension apalis' schema needs.
    sqlx::migrate!("../migrations").run(pool).await?;
    apalis_postgres::PostgresStorage::setup(pool).await?;
    Ok(())
}
