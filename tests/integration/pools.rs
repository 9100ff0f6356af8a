//! The connection pools of `db`: what each one's commits promise, and how a connection that
//! broke while idle is kept from its next user.

use std::time::Duration;

use llm_shared::db;
use sqlx::PgPool;

async fn setting(pool: &PgPool, name: &str) -> String {
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {name}")))
        .fetch_one(&mut *conn)
        .await
        .unwrap()
}

/// What the service promises (a submit, a result, a failure, a cancel) commits durably: the
/// api's and the completions' connections wait for the disk. The queue's bookkeeping (apalis'
/// fetches and acknowledgements), the claims, whose loss only runs a job again, and the
/// submits of calls answered once final do not.
#[tokio::test]
async fn only_the_queues_bookkeeping_and_the_async_writers_commit_without_waiting_for_the_disk() {
    let test = llm_tests::TestDb::new().await;
    let pool = &test.pool;
    assert_eq!(setting(pool, "synchronous_commit").await, "on");
    let writers = db::writer_pool(pool, 1);
    assert_eq!(setting(&writers, "synchronous_commit").await, "on");
    assert_eq!(
        setting(&writers, "plan_cache_mode").await,
        "force_generic_plan"
    );
    let writers = db::async_writer_pool(pool, 1);
    assert_eq!(setting(&writers, "synchronous_commit").await, "off");
    assert_eq!(
        setting(&writers, "plan_cache_mode").await,
        "force_generic_plan"
    );
    assert_eq!(setting(&writers, "enable_seqscan").await, "off");
    let queue = db::queue_pool(pool, 1);
    assert_eq!(setting(&queue, "synchronous_commit").await, "off");
    assert_eq!(setting(&queue, "enable_bitmapscan").await, "off");
}

/// `make_durable` flushes the WAL past a commit that did not wait for the disk: after it, the
/// flushed position is at or past where the WAL ended right after that commit (the WAL writer
/// would get there too, within `wal_writer_delay`, 200 ms by default: not before the next
/// line but by luck).
#[tokio::test]
async fn make_durable_flushes_the_commits_that_did_not_wait_for_the_disk() {
    let test = llm_tests::TestDb::new().await;
    let pool = &test.pool;
    sqlx::query("CREATE TABLE flushed (n int)")
        .execute(pool)
        .await
        .unwrap();
    let quick = db::async_writer_pool(pool, 1);
    let mut conn = quick.acquire().await.unwrap();
    sqlx::query("INSERT INTO flushed VALUES (1)")
        .execute(&mut *conn)
        .await
        .unwrap();
    let written: String = sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()::text")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    db::make_durable(pool).await.unwrap();
    let flushed_past: bool =
        sqlx::query_scalar("SELECT pg_current_wal_flush_lsn() >= $1::text::pg_lsn")
            .bind(&written)
            .fetch_one(pool)
            .await
            .unwrap();
    assert!(flushed_past, "the WAL is not flushed past {written}");
}

/// A connection used just now is handed out without a ping; one that sat idle for a second is
/// pinged first, and replaced when the server ended it meanwhile (a restart, an idle timeout),
/// so its next user never gets a dead connection.
#[tokio::test]
async fn a_connection_ended_while_idle_is_replaced_before_it_is_handed_out() {
    let test = llm_tests::TestDb::new().await;
    for pool in [
        db::connect_url(&test.url, 1).await.unwrap(),
        db::writer_pool(&test.pool, 1),
        db::queue_pool(&test.pool, 1),
    ] {
        let before: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .unwrap();
        let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(before)
            .fetch_one(&test.pool)
            .await
            .unwrap();
        assert!(ended);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let after: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .expect("the ended connection was handed out");
        assert_ne!(before, after);
    }
}
