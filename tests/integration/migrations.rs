//! Migrating is idempotent and safe when several processes start at once, and apalis' own
//! schema is the one our migrations of it (`migrations/queue/`) were written for.

use llm_shared::db;
use llm_tests::{TestDb, admin_url};
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
    // A database that applied the first migration's released text (comments since reworded)
    // still migrates, and then records the current text's checksum.
    let current: Vec<u8> =
        sqlx::query_scalar("SELECT checksum FROM _sqlx_migrations WHERE version = 20261125000001")
            .fetch_one(&pools[0])
            .await
            .unwrap();
    sqlx::query(
        "UPDATE _sqlx_migrations SET checksum = decode('68dcc3439b1edae22e0183791ed7704939989853df80b66310963fcdba883c607becbb76bf973f02d12bbfc3352ad110', 'hex')
         WHERE version = 20261125000001",
    )
    .execute(&pools[0])
    .await
    .unwrap();
    db::migrate(&pools[0]).await.unwrap();
    let after: Vec<u8> =
        sqlx::query_scalar("SELECT checksum FROM _sqlx_migrations WHERE version = 20261125000001")
            .fetch_one(&pools[0])
            .await
            .unwrap();
    assert_eq!(after, current);
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

/// apalis' own migrations as apalis-postgres 1.0.0 (the version `Cargo.toml` pins) records
/// them in `apalis._sqlx_migrations`: each version and the SHA-384 of its SQL.
///
/// `migrations/queue/` rewrites parts of the schema these build (apalis.jobs' `lock_by` and
/// its indexes, the `notify_workers` trigger and the function behind it), so it is written
/// against exactly this list. A release of apalis that adds or edits a migration changes it.
/// The checksums are the `sha384sum` of the files in apalis-postgres' `migrations/` folder.
const APALIS_MIGRATIONS: [(i64, &str); 23] = [
    (
        20220530084123,
        "d0839c6f57a379769dc27ccd581feb3d2709239c8f138e05271c9e3c760c4517a78a4d8912ab3d63b074b28d15ec74e9",
    ),
    (
        20220709210445,
        "14f906e53a627f1b27996e74e8e69dbc29ee70519e7af4f0032a27c75ed706a34af8bafecc8f8572855f314cbc5a7ba9",
    ),
    (
        20230330210841,
        "d9b6e57e6de60db1647e2447cf36bf0eafbec266f1d482bd196affc97617efbc4c07bad826706c7b3a0b3960cf9f727b",
    ),
    (
        20230408110421,
        "3656a91fe9c652ca23df775a601409a9252357f47088d6bcf2025fda2dd67e50c99ad94d1d2ca569c91c343189c58e33",
    ),
    (
        20230408234928,
        "176c3acaf1097ff45da76d4c746af766640027b6721a056b3fc3fcc4ab8192344920b4415e8dae46f5136ee223ed5f6b",
    ),
    (
        20240225141841,
        "c53560b7a312915d696ed6c7e18bda478d9bf1278c4d59e3c53b47c45d8a903f089c728a5ff2e131cd5b629cdfe7d4cb",
    ),
    (
        20250210092135,
        "810786bd8f1007bf523bec8ed9de0a9ae789e634e5434a1a5cc9c1b766bd758b4d37912ef390dcf95e8de23910eeef55",
    ),
    (
        20250223193249,
        "cfda3f3d62b4122b6321af0e45ba162fd3ad5d07f95e4eefe858600551167e31454ebd57d45b62e880336fcfef3ef2a7",
    ),
    (
        20250307001101,
        "b5d318f2da5e909d66db190f58b76ae52f6808733d2a88d180555430d28518fee783fb0ff1e1c37ed1dc79627abd9694",
    ),
    (
        20250404160441,
        "962242ef0971de54905cafbdefe26a3c1f32c1c52ef13b6937c2920445b1ce97cd2dcf7db9c293becc95dc55412e7a15",
    ),
    (
        20250722071207,
        "b3a1f712f8fbdfe38004134d8f55e49857b764f3277f38dd9d13299d5e0afbc895005b62fa0355b8a0d8595a38be6db7",
    ),
    (
        20251018164839,
        "e4e3d1efc77746e4db164b49017c90785613b35520da84f9a5a3f8981d60420d9dec3c94af9e8632ab711ffac7c1e199",
    ),
    (
        20251018164912,
        "803a4510201392a36e20ef81c9b05230ffa734a292c875f87ea65bc73944642b1d260a38741c4bdb88c0096338c152c0",
    ),
    (
        20251018165007,
        "dcbb8181c56cc4b9511ddc940f81f5bb9420436d0f4edf1bc9978011324e6b8d5437c50830b8651e2168608d04977272",
    ),
    (
        20251018165033,
        "21b1264f3881a4cf4fb209ff2cc75c21946441691745d7cbc9ab1dd812a1e1c08648e47ea8b4de060784da581dab2246",
    ),
    (
        20251018165056,
        "dd02b7e9c23a7da0f71bff73b469c51b7305d1830e7f4bd6de083c11315e8492801e242755d9981381760a5ace6d8fe7",
    ),
    (
        20251018165121,
        "a99e6c60687ec15c1bf8132763db63a0d9d18e1ee814527254fc95ee733e65bdf2f0ae64ca86cae0d1f232654d189fda",
    ),
    (
        20251225090252,
        "fd9f16bd772c5682ecb3f6b0a21efed5581a85316770ab8d620b38346e9319ae239ef784e8eb46735d6be735e7b3b5be",
    ),
    (
        20260508093314,
        "f2686534e1abbba2fcde715c1ca724e7937a4e1f49d6a9a462ed4f1c2e8b83518f4f78868a111d6451afba770207c2d0",
    ),
    (
        20260605000000,
        "c56dbd61156387934579af19b51ba95bd0cbe203f9528f0cd619c191730788858eca89044a7aa0622d308b9a3028e2c5",
    ),
    (
        20260824233636,
        "09c57f5bd9cce210564e8b12da0520289290ad729ef4205cdd55bd2a60ac85f889df8c23b20a4a01d959f0c8b5775a6d",
    ),
    (
        20260826101335,
        "cc38c9e6fd38157b443f6dd584e322405d49dedfd3a60867604102078a99320f97279e6c244cb87f84152ab9be7d41be",
    ),
    (
        20260902075949,
        "0dc0483d69bf530508d451bec9346f7d14be68c37308b130910462d130cab0827eb2825d20072105c83ae3a66ed82c6b",
    ),
];

/// apalis' schema is the one `migrations/queue/` was written for: the pin of apalis-postgres
/// in `Cargo.toml` holds, and a new apalis schema shows up here before it reaches a database.
#[tokio::test]
async fn apalis_schema_is_the_one_the_queue_migrations_alter() {
    let db = TestDb::new().await;
    let applied: Vec<(i64, String, bool)> = sqlx::query_as(
        "SELECT version, encode(checksum, 'hex'), success
         FROM apalis._sqlx_migrations ORDER BY version",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let failed: Vec<i64> = applied
        .iter()
        .filter(|(_, _, success)| !success)
        .map(|(version, _, _)| *version)
        .collect();
    assert!(failed.is_empty(), "apalis' migrations failed: {failed:?}");
    let actual: Vec<(i64, &str)> = applied
        .iter()
        .map(|(version, checksum, _)| (*version, checksum.as_str()))
        .collect();
    assert_eq!(
        actual, APALIS_MIGRATIONS,
        "apalis' schema changed: review migrations/queue/ before updating the pin of \
         apalis-postgres in Cargo.toml, then write the new list here"
    );
}
