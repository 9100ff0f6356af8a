//! The worker-kills scenario: workers SIGKILLed one after another while jobs and streams run
//! on them; every job must finish once, every stream end with the stored result, and the
//! provider is paid twice for a request only when its worker died between answer and commit.

use std::time::Duration;

use tokio::process::Child;

use crate::TestDb;
use crate::chaos::Sizes;
use crate::chaos::judge::{scalar, tally};
use crate::chaos::load::{ChaosClient, Until, paced_load, unique_run};
use crate::chaos::report::{Tally, describe};
use crate::chaos::stack::{base_env, refs, spawn_worker, still_running};
use crate::chaos::streams::OpenStreams;
use crate::chaos::upstream::PaidUpstream;
use crate::{signal, spawn_api_process_with};

/// `kill_workers` workers, one of them SIGKILLed (and replaced) every `kill_every` while
/// `kill_jobs` jobs arrive at `kill_rate` a second (each answered by the provider after 500 ms).
pub async fn worker_kills(sizes: &Sizes) -> Tally {
    let db = TestDb::new().await;
    let upstream = PaidUpstream::start(Duration::from_millis(500)).await;
    let env = base_env(&upstream.env());
    let (mut api, base) = spawn_api_process_with(&db, &refs(&env)).await;
    let mut workers: Vec<Child> = (0..sizes.kill_workers)
        .map(|_| spawn_worker(&db, &refs(&env)))
        .collect();
    let client = ChaosClient::new(&base);
    let jobs = sizes.kill_jobs;
    let run = unique_run();
    let load = paced_load(&client, sizes.kill_rate, Until::Sent(jobs), move |n| {
        PaidUpstream::body(&run, n)
    });
    // Streams whose workers die under them: they restart elsewhere and must end with the
    // stored result.
    let streams = OpenStreams::open(&client, sizes.kill_streams, 20, 50).await;
    let mut killed = Vec::new();
    // Kills while the load arrives, and at least two.
    while !load.is_finished() || killed.len() < 2 {
        tokio::time::sleep(sizes.kill_every).await;
        let victim = killed.len() % workers.len();
        if let Some(pid) = workers[victim].id() {
            killed.push(pid);
        }
        signal(&workers[victim], libc::SIGKILL);
        let _ = workers[victim].wait().await;
        workers[victim] = spawn_worker(&db, &refs(&env));
    }
    let load = load.await.unwrap();
    let mut accepted = load.accepted();
    accepted.extend(&streams.ids);
    let mut t = tally("worker SIGKILLs", &db.pool, &accepted, sizes.settle).await;
    streams.check(&db.pool, &mut t).await;
    upstream
        .judge(&db.pool, &load.accepted(), &killed, &mut t)
        .await;
    let abandoned = scalar(
        &db.pool,
        "SELECT COUNT(*) FROM generation_attempts WHERE outcome = 'abandoned'",
    )
    .await;
    t.note(format!(
        "{} workers at production settings, {} SIGKILLs (one every {:?}); {abandoned} in-flight \
         runs interrupted; {jobs} submits at {} a second: {}",
        sizes.kill_workers,
        killed.len(),
        sizes.kill_every,
        sizes.kill_rate,
        describe(&load.statuses())
    ));
    if abandoned == 0 {
        t.problem("no worker was killed while running a job: the scenario tested nothing");
    }
    if t.accepted < jobs + sizes.kill_streams {
        t.problem(format!("only {} of {jobs} submits accepted", t.accepted));
    }
    still_running(&mut api, "the api", &mut t);
    t
}
