//! PostgreSQL: the pool and migrations (ours in `migrations/`, then apalis' own schema, then
//! ours of apalis' schema in `migrations/queue/`).

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
    pool_options()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
}

/// How long a connection may sit idle in a pool and still be handed out without a ping.
const TRUSTED_IDLE: Duration = Duration::from_secs(1);

/// Options shared by every pool: a connection idle for [`TRUSTED_IDLE`] or longer is pinged
/// before it is handed out (and replaced if the ping fails), one used just now is not. sqlx
/// pings before every acquire by default: a round trip before each statement, five of them in
/// the life of a request submitted and answered at one client (`tcpdump` on the loopback
/// while `/v1/chat/completions` misses run one at a time). A connection that broke within the
/// last second fails its statement instead, which every caller already handles as it handles
/// a connection that breaks mid-statement.
fn pool_options() -> PgPoolOptions {
    PgPoolOptions::new()
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for < TRUSTED_IDLE {
                    return Ok(true);
                }
                Ok(sqlx::Connection::ping(conn).await.is_ok())
            })
        })
}

/// A small pool beside `pool` (same database and credentials) for a group-commit writer
/// ([`crate::group_commit`]), its connections set up with [`WRITER_SETTINGS`].
pub fn writer_pool(pool: &PgPool, connections: u32) -> PgPool {
    pool_with(pool, connections, &WRITER_SETTINGS)
}

/// A pool for apalis' own statements (a worker's queue storage: fetches, acknowledgements,
/// heartbeats), to the database of `pool`, its connections set up with [`QUEUE_SETTINGS`].
pub fn queue_pool(pool: &PgPool, connections: u32) -> PgPool {
    pool_with(pool, connections, &QUEUE_SETTINGS)
}

/// A group-commit writer's pool ([`writer_pool`]) whose commits do not wait for the disk
/// ([`ASYNC_WRITER_SETTINGS`]): a worker's claims, the submits of calls answered only once
/// final, and a submit named at once that is stored alone (flushed after its commit).
pub fn async_writer_pool(pool: &PgPool, connections: u32) -> PgPool {
    pool_with(pool, connections, &ASYNC_WRITER_SETTINGS)
}

/// Makes every commit made before it durable, those that did not wait for the disk included
/// ([`ASYNC_COMMIT`]): for a caller about to name a request stored by such a commit. A
/// transactional WAL record forces this transaction's commit to flush, and a flush covers
/// everything written before it; a transaction that writes no WAL (an id taken with
/// `txid_current()`, a `NOTIFY`) commits without flushing.
pub async fn make_durable(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_logical_emit_message(true, 'llm-service', 'durable')")
        .execute(pool)
        .await
        .map(drop)
}

fn pool_with(pool: &PgPool, connections: u32, settings: &[(&str, &str)]) -> PgPool {
    let options = (*pool.connect_options())
        .clone()
        .options(settings.iter().copied());
    pool_options()
        .max_connections(connections)
        .acquire_timeout(pool.options().get_acquire_timeout())
        .connect_lazy_with(options)
}

/// The settings of the connections apalis runs its statements on (see [`queue_pool`]).
/// - `enable_bitmapscan = off`: apalis acknowledges results by `lock_by = <worker>`, and every
///   job a worker fetched leaves an entry for its worker in that index until a vacuum, long
///   after the job is done. Read through a bitmap, each acknowledgement visited the heap for
///   every one of them (2,496 entries and 157 pages for one job in a 10,000-job drain: 111 µs
///   of PostgreSQL time per job). A plain index scan marks the entries of dead rows as it
///   meets them, so the next scans skip them without visiting the heap.
/// - `synchronous_commit = off` ([`ASYNC_COMMIT`]): a fetch or an acknowledgement lost with the
///   server only runs a job again.
pub const QUEUE_SETTINGS: [(&str, &str); 2] = [("enable_bitmapscan", "off"), ASYNC_COMMIT];

/// Commits that return before their WAL reaches the disk (it follows within
/// `wal_writer_delay`, or with the next commit that waits). For the statements whose loss in a
/// server crash only means a job runs again, or a call whose caller was told nothing is
/// forgotten: apalis' fetches and acknowledgements, the claims, and the submits of calls
/// answered only once final (the doors' waited calls; see `requests::Durability`), or flushed
/// before they are named (a submit answered `202` while no other is stored). Each waited
/// for a flush on the path of every request (0.4–0.5 ms each here:
/// `tcpdump -i lo` of `/v1/chat/completions` misses at one client): the fetch's before the
/// claim, the claim's before the provider call. Submits named before their outcome stored
/// together, a result, a cancel and a provider's failure still commit durably, and each flush
/// carries every commit before it. A claim lost in a crash leaves its request as it was: the
/// job runs again, and a result of the lost claim is refused by the completion's guard; a
/// request failed by its claim (its attempts used up by lost workers) is failed again by the
/// next delivery.
pub const ASYNC_COMMIT: (&str, &str) = ("synchronous_commit", "off");

/// [`WRITER_SETTINGS`] and [`ASYNC_COMMIT`] (see [`async_writer_pool`]).
pub const ASYNC_WRITER_SETTINGS: [(&str, &str); 3] =
    [WRITER_SETTINGS[0], WRITER_SETTINGS[1], ASYNC_COMMIT];

/// The settings of a group-commit writer's connections. A writer runs a few statements
/// thousands of times a second, each finding every row it reads by key (see `requests`'
/// BY_ID_ONLY), so one plan fits every size of table:
/// - `plan_cache_mode = force_generic_plan`: each statement is planned once per connection.
///   Left to choose, PostgreSQL kept re-planning the submit statement for every batch (a
///   custom plan per execution, a third of its time on cache hits).
/// - `enable_seqscan = off`: a plan made while a table is tiny (a new deployment, a truncate)
///   is kept as the table grows, and on a few pages a sequential scan is cheapest. In a
///   10,000-job run the completing statement's cached plan scanned `generation_requests`
///   for every batch, up to 9,829 rows each. With scans disabled the planner takes the key's
///   index whatever the statistics.
pub const WRITER_SETTINGS: [(&str, &str); 2] = [
    ("plan_cache_mode", "force_generic_plan"),
    ("enable_seqscan", "off"),
];

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

/// The service's migrations (`migrations/`), built into the binary.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Where [`QUEUE_MIGRATOR`] records what it applied (beside `_sqlx_migrations`).
const QUEUE_MIGRATIONS_TABLE: &str = "_sqlx_queue_migrations";

/// The service's migrations of apalis' schema (`migrations/queue/`): they need apalis' tables,
/// so they run after apalis' own migrations, with their own record.
static QUEUE_MIGRATOR: std::sync::LazyLock<sqlx::migrate::Migrator> =
    std::sync::LazyLock::new(|| {
        let mut migrator = sqlx::migrate!("../migrations/queue");
        migrator.dangerous_set_table_name(QUEUE_MIGRATIONS_TABLE);
        migrator
    });

/// Migrations whose comments were reworded after release, what they do unchanged: their
/// version and the checksum of the released text (SHA-384, hex). A database that applied the
/// released text has the current checksum recorded instead, so that the migrator accepts it.
const REWORDED: &[(i64, &str)] = &[(
    20261125000001,
    "68dcc3439b1edae22e0183791ed7704939989853df80b66310963fcdba883c607becbb76bf973f02d12bbfc3352ad110",
)];

/// Records the current checksum of each [`REWORDED`] migration applied from its released text.
async fn accept_reworded(pool: &PgPool) -> Result<(), sqlx::Error> {
    let recorded: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
            .fetch_one(pool)
            .await?;
    if recorded.is_none() {
        return Ok(());
    }
    for (version, released) in REWORDED {
        let Some(current) = MIGRATOR.iter().find(|m| m.version == *version) else {
            continue;
        };
        sqlx::query(
            "UPDATE _sqlx_migrations SET checksum = $1
             WHERE version = $2 AND checksum = decode($3, 'hex')",
        )
        .bind(current.checksum.as_ref())
        .bind(version)
        .bind(released)
        .execute(pool)
        .await?;
    }
    Ok(())
}

async fn run_migrations(pool: &PgPool) -> Result<(), MigrateError> {
    accept_reworded(pool).await?;
    // Ours first: the first one creates the hstore extension apalis' schema needs.
    MIGRATOR.run(pool).await?;
    apalis_postgres::PostgresStorage::setup(pool).await?;
    QUEUE_MIGRATOR.run(pool).await?;
    Ok(())
}

/// The schema compared with the migrations this build knows (for readiness).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct MigrationState {
    /// Migrations this build knows.
    pub expected: usize,
    /// Of those, how many are applied successfully.
    pub applied: usize,
    /// Versions this build knows that are not applied (or failed).
    pub pending: Vec<i64>,
    /// Versions applied that this build does not know (a newer release migrated): harmless,
    /// migrations are forward-compatible.
    pub unknown: usize,
}

impl MigrationState {
    pub fn up_to_date(&self) -> bool {
        self.pending.is_empty()
    }
}

/// Reads the migration records and compares them with the migrations built in.
pub async fn migration_state(pool: &PgPool) -> Result<MigrationState, sqlx::Error> {
    let mut state = MigrationState {
        expected: 0,
        applied: 0,
        pending: Vec::new(),
        unknown: 0,
    };
    for migrator in [&MIGRATOR, &*QUEUE_MIGRATOR] {
        let applied = applied_versions(pool, &migrator.table_name).await?;
        let known: Vec<i64> = migrator
            .iter()
            .filter(|m| m.migration_type.is_up_migration())
            .map(|m| m.version)
            .collect();
        let pending: Vec<i64> = known
            .iter()
            .copied()
            .filter(|v| !applied.contains(v))
            .collect();
        state.expected += known.len();
        state.applied += known.len() - pending.len();
        state.unknown += applied.iter().filter(|v| !known.contains(v)).count();
        state.pending.extend(pending);
    }
    Ok(state)
}

/// The versions a migration record (`table`, one of the built-in names) holds as applied.
async fn applied_versions(pool: &PgPool, table: &str) -> Result<Vec<i64>, sqlx::Error> {
    let sql = format!("SELECT version FROM {table} WHERE success");
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_all(pool)
        .await
        .or_else(|err| match &err {
            // No migration table yet: nothing is applied.
            sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01") => Ok(Vec::new()),
            _ => Err(err),
        })
}
