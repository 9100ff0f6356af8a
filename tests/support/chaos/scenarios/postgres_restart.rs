//! The postgres-restart scenario: a private PostgreSQL stopped and started again under load;
//! the api answers 503 meanwhile, and the api and workers recover without a restart.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use tokio::process::Child;
use tokio::time::Instant;
use uuid::Uuid;

use crate::chaos::Sizes;
use crate::chaos::judge::tally;
use crate::chaos::load::{ChaosClient, Until, paced_load, unique_run};
use crate::chaos::report::{Tally, describe};
use crate::chaos::stack::{base_env, refs, spawn_worker, still_running};
use crate::chaos::streams::OpenStreams;
use crate::chaos::upstream::PaidUpstream;
use crate::servers::PrivatePostgres;
use crate::{TestDb, spawn_api_process_with};

/// A submit load while a private PostgreSQL is stopped for `pg_outage` and started again:
/// the api and the workers recover without a restart, the api answers 503 meanwhile, and no
/// answer a provider gave is paid for twice. The load (`pg_rate` a second) runs `pg_load`
/// before the outage, through it, and `pg_load` after the restart.
pub async fn postgres_restart(sizes: &Sizes) -> Tally {
    let pg = PrivatePostgres::start().await;
    let db = TestDb::on(&pg.admin_url()).await;
    let upstream = PaidUpstream::start(Duration::from_millis(100)).await;
    let env = base_env(&upstream.env());
    let (mut api, base) = spawn_api_process_with(&db, &refs(&env)).await;
    let mut workers: Vec<Child> = (0..2).map(|_| spawn_worker(&db, &refs(&env))).collect();
    let client = ChaosClient::new(&base);
    let stop = Arc::new(AtomicBool::new(false));
    let run = unique_run();
    let load = paced_load(
        &client,
        sizes.pg_rate,
        Until::Stopped(stop.clone()),
        move |n| PaidUpstream::body(&run, n),
    );
    tokio::time::sleep(sizes.pg_load).await;
    // Streams mid-flight when the server stops: 30 tokens, 200 ms apart.
    let streams = OpenStreams::open(&client, sizes.pg_streams, 30, 200).await;
    // From the start of the shutdown: sessions are terminated, new ones refused.
    let down_at = Instant::now();
    pg.down().await;
    let mut readiness_during = BTreeMap::new();
    while down_at.elapsed() < sizes.pg_outage {
        *readiness_during
            .entry(client.readiness().await)
            .or_insert(0) += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let up_at = Instant::now();
    pg.up().await;
    let back_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT NOW()")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let ready_at = Instant::now();
    tokio::time::sleep(sizes.pg_load).await;
    stop.store(true, Ordering::Relaxed);
    let end = Instant::now();
    let load = load.await.unwrap();
    let mut accepted = load.accepted();
    accepted.extend(&streams.ids);
    let mut t = tally("PostgreSQL restart", &db.pool, &accepted, sizes.settle).await;
    upstream
        .judge(&db.pool, &load.accepted(), &[], &mut t)
        .await;
    let during = load.statuses_between(down_at, up_at);
    let after = load.statuses_between(ready_at + Duration::from_secs(2), end);
    t.note(format!(
        "PostgreSQL down for {:?} between {:?} of submits ({} a second) before and after",
        sizes.pg_outage, sizes.pg_load, sizes.pg_rate
    ));
    streams.check(&db.pool, &mut t).await;
    t.note(format!(
        "submits sent while down: {} (slowest answer {:.1?}); /health/ready while down: {}",
        describe(&during),
        load.slowest_between(down_at, up_at),
        describe(
            &readiness_during
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect()
        )
    ));
    t.note(format!(
        "submits from 2 s after PostgreSQL was ready again on: {}; all: {}",
        describe(&after),
        describe(&load.statuses())
    ));
    if !during.contains_key("503") {
        t.problem("no submit was answered 503 while PostgreSQL was down");
    }
    if during.keys().any(|k| !["202", "503"].contains(&k.as_str())) {
        t.problem("while PostgreSQL was down, submits got answers other than 202 / 503");
    }
    if readiness_during.keys().any(|s| *s != 503) {
        t.problem("/health/ready did not answer 503 while PostgreSQL was down");
    }
    if after.keys().any(|k| k != "202") || !after.contains_key("202") {
        t.problem("the api did not go back to accepting every submit after the restart");
    }
    if client.readiness().await != 200 {
        t.problem("/health/ready is not 200 after the restart");
    }
    still_running(&mut api, "the api", &mut t);
    for (i, worker) in workers.iter_mut().enumerate() {
        still_running(worker, &format!("worker {i}"), &mut t);
    }
    check_work_after_restart(&db.pool, &accepted, &workers, back_at, up_at, &mut t).await;
    drop(workers);
    drop(api);
    drop(db);
    drop(pg);
    t
}

/// Whether work went on after the restart: requests submitted after it completed, and each
/// worker process (never restarted) took a job once PostgreSQL was back at `back_at`.
async fn check_work_after_restart(
    pool: &PgPool,
    accepted: &[Uuid],
    workers: &[Child],
    back_at: chrono::DateTime<chrono::Utc>,
    up_at: Instant,
    t: &mut Tally,
) {
    let after_restart: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM generation_requests WHERE id = ANY($1) AND created_at > NOW() - make_interval(secs => $2) AND status = 'completed'",
    )
    .bind(accepted)
    .bind(up_at.elapsed().as_secs_f64())
    .fetch_one(pool)
    .await
    .unwrap();
    // Worker names are `<host>-<pid>-<suffix>` (a restarted apalis worker adds `-r<n>`).
    let pids: Vec<String> = workers
        .iter()
        .filter_map(|w| w.id().map(|pid| pid.to_string()))
        .collect();
    // When each worker process took its first job once PostgreSQL was back.
    let mut first_jobs = Vec::new();
    for pid in &pids {
        let first: Option<f64> = sqlx::query_scalar(
            "SELECT EXTRACT(EPOCH FROM MIN(started_at) - $1)::float8 FROM generation_attempts
             WHERE started_at > $1 AND split_part(worker, '-', 2) = $2",
        )
        .bind(back_at)
        .bind(pid)
        .fetch_one(pool)
        .await
        .unwrap();
        first_jobs.push(first);
    }
    t.note(format!(
        "{after_restart} requests submitted after the restart completed; the {} worker processes \
         (never restarted) took their first job {} after PostgreSQL was back",
        pids.len(),
        first_jobs
            .iter()
            .map(|f| f.map_or("never".to_owned(), |s| format!("{s:.1} s")))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    if after_restart == 0 {
        t.problem("no request submitted after the restart completed");
    }
    if first_jobs.iter().any(Option::is_none) {
        t.problem("a worker process took no job after the restart");
    }
}
