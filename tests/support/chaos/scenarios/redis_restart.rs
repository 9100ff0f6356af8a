//! The redis-restart scenario: a private Redis killed and started again under load and open
//! streams; submits are unaffected, every stream ends, rate limiting follows its fail mode,
//! and the relay carries tokens live again afterwards.

use std::time::Duration;

use tokio::time::Instant;

use crate::chaos::Sizes;
use crate::chaos::judge::tally;
use crate::chaos::load::{ChaosClient, Until, paced_load, unique_run};
use crate::chaos::report::{Tally, describe};
use crate::chaos::stack::{base_env, refs, spawn_worker, still_running};
use crate::chaos::streams::{OpenStreams, live_stream};
use crate::chaos::upstream::PaidUpstream;
use crate::servers::PrivateRedis;
use crate::{TestDb, spawn_api_process_with};

/// A submit load and open streams while a private Redis is killed and started again:
/// submits are unaffected, every stream ends (`done` with the stored result, or `error`),
/// rate limiting follows its fail mode (an api with `closed` answers 503 meanwhile).
pub async fn redis_restart(sizes: &Sizes) -> Tally {
    let mut redis = PrivateRedis::start().await;
    let db = TestDb::new().await;
    let upstream = PaidUpstream::start(Duration::from_millis(20)).await;
    let mut redis_env = upstream.env();
    redis_env.push(("REDIS_URL", redis.url()));
    let open_env = base_env(&redis_env);
    let mut closed_env = base_env(&redis_env);
    closed_env.push(("RATE_LIMIT_FAIL_MODE", "closed".to_owned()));
    let (mut api, base) = spawn_api_process_with(&db, &refs(&open_env)).await;
    let (mut api_closed, closed_base) = spawn_api_process_with(&db, &refs(&closed_env)).await;
    let mut worker = spawn_worker(&db, &refs(&open_env));
    let client = ChaosClient::new(&base);
    let closed_client = ChaosClient::new(&closed_base);
    let run = unique_run();

    let (_, live_before) = live_stream(&client, &db.pool, &format!("{run} before")).await;
    // Streams that will be mid-flight when Redis dies: 30 tokens, 100 ms apart.
    let streams = OpenStreams::open(&client, sizes.redis_streams, 30, 100).await;
    let stream_ids = streams.ids.clone();

    let end = Instant::now() + sizes.redis_load;
    let open_run = format!("{run} open");
    let body = move |n| PaidUpstream::body(&open_run, n);
    let load = paced_load(&client, sizes.redis_rate, Until::Deadline(end), body);
    let closed_run = format!("{run} closed");
    let body = move |n| PaidUpstream::body(&closed_run, n);
    let closed_load = paced_load(&closed_client, sizes.redis_rate, Until::Deadline(end), body);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let down_at = Instant::now();
    redis.kill().await;
    tokio::time::sleep(sizes.redis_outage).await;
    let up_at = Instant::now();
    redis.up().await;
    let load = load.await.unwrap();
    let closed_load = closed_load.await.unwrap();

    // After the restart the relay carries tokens live again.
    let (fresh_end, live_after_restart) =
        live_stream(&client, &db.pool, &format!("{run} after")).await;
    let mut accepted = load.accepted();
    accepted.extend(closed_load.accepted());
    accepted.extend(&stream_ids);
    let mut t = tally("Redis restart", &db.pool, &accepted, sizes.settle).await;
    let mut paid_for = load.accepted();
    paid_for.extend(closed_load.accepted());
    upstream.judge(&db.pool, &paid_for, &[], &mut t).await;
    t.note(format!(
        "Redis killed for {:?} during {:?} of submits ({} a second to each api)",
        sizes.redis_outage, sizes.redis_load, sizes.redis_rate,
    ));
    streams.check(&db.pool, &mut t).await;
    let during = load.statuses_between(down_at, up_at);
    let closed_during = closed_load.statuses_between(down_at, up_at);
    t.note(format!(
        "submits (fail mode open) while down: {}; all: {}",
        describe(&during),
        describe(&load.statuses())
    ));
    t.note(format!(
        "submits to an api with RATE_LIMIT_FAIL_MODE=closed while down: {}",
        describe(&closed_during)
    ));
    t.note(format!(
        "a stream opened after the restart ended with {} (tokens live: {live_after_restart})",
        fresh_end.as_deref().unwrap_or("nothing")
    ));
    if load.statuses().keys().any(|k| k != "202") {
        t.problem("submits with fail mode open were affected by the Redis outage");
    }
    if !closed_during.contains_key("503") {
        t.problem("the fail-closed api did not answer 503 while Redis was down");
    }
    let closed_after = closed_load.statuses_between(up_at + Duration::from_secs(1), end);
    t.note(format!(
        "submits to the fail-closed api from 1 s after the restart on: {}",
        describe(&closed_after)
    ));
    if closed_after.keys().any(|k| k != "202") {
        t.problem("the fail-closed api still refused submits after Redis was back");
    }
    if closed_during
        .keys()
        .any(|k| !["202", "503"].contains(&k.as_str()))
    {
        t.problem("the fail-closed api answered something other than 202 / 503");
    }
    if fresh_end.as_deref() != Some("done") {
        t.problem("a stream opened after the restart did not complete");
    }
    if !live_before {
        t.problem("before the outage, tokens were not relayed live");
    }
    if !live_after_restart {
        t.problem("after the restart, tokens were not relayed live");
    }
    still_running(&mut api, "the api", &mut t);
    still_running(&mut api_closed, "the fail-closed api", &mut t);
    still_running(&mut worker, "the worker", &mut t);
    t
}
