//! The worker-kills scenario: workers SIGKILLed one after another while jobs and streams run
//! on them; every job must finish once, every stream end with the stored result.

use tokio::process::Child;
use tokio::time::Instant;

use crate::chaos::Sizes;
use crate::chaos::judge::{scalar, tally};
use crate::chaos::load::{ChaosClient, Until, mock_load};
use crate::chaos::report::{Tally, describe};
use crate::chaos::stack::{base_env, refs, still_running};
use crate::chaos::streams::OpenStreams;
use crate::{TestDb, signal, spawn_api_process_with, spawn_worker_process};

/// `kill_workers` workers, one of them SIGKILLed (and replaced) every `kill_every` while
/// `kill_jobs` jobs run.
pub async fn worker_kills(sizes: &Sizes) -> Tally {
    let db = TestDb::new().await;
    let env = base_env(&[]);
    let (mut api, base) = spawn_api_process_with(&db, &refs(&env)).await;
    let mut workers: Vec<Child> = (0..sizes.kill_workers)
        .map(|_| spawn_worker_process(&db, &refs(&env)))
        .collect();
    let client = ChaosClient::new(&base);
    let jobs = sizes.kill_jobs;
    let load = mock_load(&client, 16, Until::Sent(jobs), 500);
    // Streams whose workers die under them: they restart elsewhere and must end with the
    // stored result.
    let streams = OpenStreams::open(&client, sizes.kill_streams, 20, 50).await;
    let started = Instant::now();
    let mut kills = 0usize;
    loop {
        tokio::time::sleep(sizes.kill_every).await;
        let open = scalar(
            &db.pool,
            "SELECT COUNT(*) FROM generation_requests WHERE status NOT IN ('completed', 'failed', 'cancelled')",
        )
        .await;
        if (load.is_finished() && open == 0) || started.elapsed() > sizes.settle {
            break;
        }
        let victim = kills % workers.len();
        signal(&workers[victim], libc::SIGKILL);
        let _ = workers[victim].wait().await;
        workers[victim] = spawn_worker_process(&db, &refs(&env));
        kills += 1;
    }
    let load = load.await.unwrap();
    let mut accepted = load.accepted();
    accepted.extend(&streams.ids);
    let mut t = tally("worker SIGKILLs", &db.pool, &accepted, sizes.settle).await;
    streams.check(&db.pool, &mut t).await;
    let abandoned = scalar(
        &db.pool,
        "SELECT COUNT(*) FROM generation_attempts WHERE outcome = 'abandoned'",
    )
    .await;
    t.note(format!(
        "{} workers, {kills} SIGKILLs (one every {:?}); {abandoned} in-flight runs interrupted; submits: {}",
        sizes.kill_workers,
        sizes.kill_every,
        describe(&load.statuses())
    ));
    if kills == 0 || abandoned == 0 {
        t.problem("no worker was killed while running a job: the scenario tested nothing");
    }
    if t.accepted < jobs + sizes.kill_streams {
        t.problem(format!("only {} of {jobs} submits accepted", t.accepted));
    }
    still_running(&mut api, "the api", &mut t);
    t
}
