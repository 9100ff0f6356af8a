//! The api-kills scenario: the api SIGKILLed and restarted on its port under a submit load;
//! every `202` must complete, rows committed without an answer must finish too, and no request
//! is paid twice (no worker dies here).

use tokio::process::Child;
use tokio::time::Instant;

use crate::chaos::Sizes;
use crate::chaos::judge::{tally, unanswered_rows};
use crate::chaos::load::{ChaosClient, Until, paced_load, unique_run};
use crate::chaos::report::{Tally, describe};
use crate::chaos::stack::{base_env, refs, spawn_worker};
use crate::chaos::upstream::PaidUpstream;
use crate::{TestDb, free_port, signal, spawn_api_process_on};

/// Submits at `api_rate` a second for `api_load` while the api is SIGKILLed (and restarted on
/// its port) `api_kills` times: every id that got a 202 completes; rows committed without an
/// answer finish too.
pub async fn api_kills(sizes: &Sizes) -> Tally {
    let db = TestDb::new().await;
    let upstream = PaidUpstream::start(std::time::Duration::from_millis(50)).await;
    let env = base_env(&upstream.env());
    let port = free_port();
    let (mut api, base) = spawn_api_process_on(&db, port, &refs(&env)).await;
    let _workers: Vec<Child> = (0..2).map(|_| spawn_worker(&db, &refs(&env))).collect();
    let client = ChaosClient::new(&base);
    let end = Instant::now() + sizes.api_load;
    let run = unique_run();
    let load = paced_load(&client, sizes.api_rate, Until::Deadline(end), move |n| {
        PaidUpstream::body(&run, n)
    });
    let gap = sizes.api_load / (sizes.api_kills as u32 + 1);
    for _ in 0..sizes.api_kills {
        tokio::time::sleep(gap).await;
        signal(&api, libc::SIGKILL);
        let _ = api.wait().await;
        api = spawn_api_process_on(&db, port, &refs(&env)).await.0;
    }
    let load = load.await.unwrap();
    let accepted = load.accepted();
    let mut t = tally("api SIGKILLs", &db.pool, &accepted, sizes.settle).await;
    let (rows, open) = unanswered_rows(&db.pool, &accepted, sizes.settle).await;
    upstream.judge(&db.pool, &accepted, &[], &mut t).await;
    t.note(format!(
        "{} SIGKILLs of the api during {:?} of submits at {} a second; answers: {}",
        sizes.api_kills,
        sizes.api_load,
        sizes.api_rate,
        describe(&load.statuses())
    ));
    t.note(format!(
        "{rows} requests committed whose 202 never reached the client; {open} of them not final"
    ));
    if open > 0 {
        t.problem(format!(
            "{open} committed but unanswered requests never finished"
        ));
    }
    let other: usize = load
        .statuses()
        .iter()
        .filter(|(k, _)| !["202", "unreachable"].contains(&k.as_str()))
        .map(|(_, n)| n)
        .sum();
    if other > 0 {
        t.problem(format!(
            "{other} submits answered with an error status while the api was up"
        ));
    }
    t
}
