//! Migrating is idempotent and safe when several processes start at once.

use llm_shared::db;
use llm_tests::admin_url;
use uuid::Uuid;

#[tokio::test]
async fn concurrent_and_repeated_migrations_succeed() {
    let name = format!("llmtest_{}", Uuid::now_v7().simple());
    let admin = db::connect_url(&admin_url(), 1).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    let (base, _) = admin_url()
        .rsplit_once('/')
        .map(|(b, d)| (b.to_owned(), d.to_owned()))
        .unwrap();
    let url = format!("{base}/{name}");

    // Four "processes" (separate pools) migrate a fresh database at the same time.
    let mut pools = Vec::new();
    for _ in 0..4 {
        pools.push(db::connect_url(&url, 2).await.unwrap());
    }
    let results = futures::future::join_all(pools.iter().map(db::migrate)).await;
    for result in results {
        result.unwrap();
    }
    // And again: nothing left to do, no error.
    db::migrate(&pools[0]).await.unwrap();
    let ours: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(&pools[0])
        .await
        .unwrap();
    let files = llm_tests::migration_files("migrations");
    assert_eq!(ours as usize, files);
    let tables: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.tables
         WHERE table_name IN ('generation_requests', 'generation_attempts', 'response_cache', 'jobs', 'workers')",
    )
    .fetch_one(&pools[0])
    .await
    .unwrap();
    assert_eq!(tables, 5);

    for pool in pools {
        pool.close().await;
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await
    .unwrap();
}
