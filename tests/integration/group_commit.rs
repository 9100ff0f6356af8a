//! Group commit of the worker's claim and completing write: many jobs' calls in one statement,
//! each job getting exactly the answer it would get alone. Through the library functions (the
//! clearest proof of what one batch does) and through a worker's batchers.

use std::time::Duration;

use llm_shared::error::is_unavailable;
use llm_shared::generation::GenerationOutput;
use llm_shared::requests::{self, Claim, ClaimedRequest, Success, SuccessRow};
use llm_tests::{TestApp, spawn_app, worker_config, worker_models};
use llm_worker::WorkerState;
use serde_json::json;
use uuid::Uuid;

const WORKER: &str = "group-committer";
const LEASE: Duration = Duration::from_secs(30);

/// A request queued with its job that reads no cache (so identical prompts are not coalesced)
/// but stores its result under its cache key.
async fn submit_uncached(app: &TestApp, prompt: &str) -> Uuid {
    app.submit_ok(json!({"prompt": prompt, "cache": {"no_cache": true}}))
        .await
}

fn output(n: u32) -> GenerationOutput {
    GenerationOutput {
        text: format!("answer {n}"),
        prompt_tokens: 10 + n,
        completion_tokens: 5,
        finish_reason: "stop".into(),
        upstream_model: "mock-upstream".into(),
        tool_calls: Vec::new(),
    }
}

fn row(claimed: &ClaimedRequest, output: &GenerationOutput) -> SuccessRow {
    SuccessRow::new(
        claimed,
        &Success {
            attempt: claimed.first_attempt,
            provider: "mock",
            served_model: &claimed.model,
            output,
            latency: Duration::from_millis(3),
            cost_usd: 0.25,
            cache_ttl: Duration::from_secs(600),
        },
    )
}

fn claimed(claim: Claim) -> ClaimedRequest {
    match claim {
        Claim::Claimed(claimed) => *claimed,
        other => panic!("expected a claim, got {other:?}"),
    }
}

async fn claim_all(app: &TestApp, ids: &[Uuid]) -> Vec<ClaimedRequest> {
    requests::claim_many(&app.db.pool, ids, WORKER, LEASE)
        .await
        .unwrap()
        .into_iter()
        .map(|answer| claimed(answer.unwrap()))
        .collect()
}

/// Three requests submitted and claimed by [`WORKER`].
async fn three_claimed(app: &TestApp, prompt: &str) -> (Vec<Uuid>, Vec<ClaimedRequest>) {
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(submit_uncached(app, &format!("{prompt} {n}")).await);
    }
    let claims = claim_all(app, &ids).await;
    (ids, claims)
}

/// As if the lease of `id` had run out and another worker had claimed it again.
async fn lose_lease(app: &TestApp, id: Uuid) {
    sqlx::query(
        "UPDATE generation_requests SET claimed_by = 'another-worker', attempts = attempts + 1
         WHERE id = $1",
    )
    .bind(id)
    .execute(&app.db.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn one_completing_statement_answers_each_row_and_writes_exact_usage_cache_and_events() {
    let app = spawn_app().await;
    // A leader with a follower (an identical request that waits for it).
    let leader = app
        .submit_ok(json!({"prompt": "group commit: leader"}))
        .await;
    let follower = app
        .submit_ok(json!({"prompt": "group commit: leader"}))
        .await;
    let following = format!(
        "SELECT COUNT(*) FROM generation_requests WHERE id = '{follower}' AND coalesced_into = '{leader}'"
    );
    assert_eq!(app.db.count(&following).await, 1);
    // Twenty more: 0 and 1 share a prompt, so a cache key; 5 loses its lease. Twenty usage rows
    // over sixteen shards: at least two of them share a usage key.
    let mut ids = vec![leader];
    for n in 0..20 {
        let prompt = if n < 2 {
            "group commit: shared".to_owned()
        } else {
            format!("group commit: {n}")
        };
        ids.push(submit_uncached(&app, &prompt).await);
    }
    let lost = ids[6];
    let claims = claim_all(&app, &ids).await;
    lose_lease(&app, lost).await;

    let outputs: Vec<_> = (0..ids.len() as u32).map(output).collect();
    let rows: Vec<_> = claims
        .iter()
        .zip(&outputs)
        .map(|(c, o)| row(c, o))
        .collect();
    let held = requests::complete_many(&app.db.pool, WORKER, &rows)
        .await
        .unwrap();
    let expected: Vec<bool> = ids.iter().map(|&id| id != lost).collect();
    assert_eq!(
        held, expected,
        "only the row whose lease was lost is refused"
    );

    let db = &app.db;
    assert_eq!(
        db.count("SELECT COUNT(*) FROM generation_requests WHERE status = 'completed'")
            .await,
        21,
        "twenty held rows and the follower"
    );
    let (status, holder): (String, Option<String>) =
        sqlx::query_as("SELECT status, claimed_by FROM generation_requests WHERE id = $1")
            .bind(lost)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        (status.as_str(), holder.as_deref()),
        ("running", Some("another-worker"))
    );
    let (_, follower_view) = app.poll(follower, 0).await;
    assert_eq!(follower_view["status"], "completed");
    assert_eq!(follower_view["cached"], true);
    assert_eq!(follower_view["result"], "answer 0");

    // Usage: every completed request once, tokens and cost summed exactly.
    let done_tokens: i64 = ids
        .iter()
        .zip(&outputs)
        .filter(|(id, _)| **id != lost)
        .map(|(_, o)| i64::from(o.prompt_tokens))
        .sum();
    assert_eq!(
        db.count("SELECT SUM(requests)::bigint FROM usage_daily")
            .await,
        21
    );
    assert_eq!(
        db.count("SELECT SUM(cached_requests)::bigint FROM usage_daily")
            .await,
        1
    );
    assert_eq!(
        db.count("SELECT SUM(prompt_tokens)::bigint FROM usage_daily")
            .await,
        done_tokens
    );
    assert_eq!(
        db.count("SELECT SUM(completion_tokens)::bigint FROM usage_daily")
            .await,
        20 * 5
    );
    assert_eq!(
        db.count("SELECT ROUND(SUM(cost_usd) * 100)::bigint FROM usage_daily")
            .await,
        20 * 25
    );
    assert!(
        db.count("SELECT MAX(requests)::bigint FROM usage_daily")
            .await
            >= 2,
        "rows sharing a usage key were summed into one"
    );

    // The cache: one entry per key; of the two results for one key, the later one.
    assert_eq!(db.count("SELECT COUNT(*) FROM response_cache").await, 19);
    let shared: String = sqlx::query_scalar(
        "SELECT c.response FROM response_cache c
         JOIN generation_requests r ON r.cache_key = c.cache_key WHERE r.id = $1",
    )
    .bind(ids[1])
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(shared, "answer 2");

    // Events: two per completed request (the follower's too), `completed` before
    // `usage.updated`.
    assert_eq!(db.count("SELECT COUNT(*) FROM outbox_events").await, 42);
    assert_eq!(
        db.count(
            "SELECT COUNT(*) FROM outbox_events c JOIN outbox_events u
               ON u.request_id = c.request_id AND u.type = 'usage.updated'
             WHERE c.type = 'generation.completed' AND c.seq < u.seq"
        )
        .await,
        21
    );
    // Attempts: each held row's succeeded, the lost one's still running.
    assert_eq!(
        db.count("SELECT COUNT(*) FROM generation_attempts WHERE outcome = 'succeeded'")
            .await,
        20
    );
    let lost_outcome: String =
        sqlx::query_scalar("SELECT outcome FROM generation_attempts WHERE request_id = $1")
            .bind(lost)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(lost_outcome, "running");

    // A second delivery of the same batch changes nothing.
    let again = requests::complete_many(&app.db.pool, WORKER, &rows)
        .await
        .unwrap();
    assert!(again.iter().all(|held| !held));
    assert_eq!(
        db.count("SELECT SUM(requests)::bigint FROM usage_daily")
            .await,
        21
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM outbox_events").await, 42);
}

#[tokio::test]
async fn one_claim_statement_answers_each_id_as_a_claim_alone_would() {
    let app = spawn_app().await;
    let pool = &app.db.pool;
    let set = |sql: &'static str, id: Uuid| async move {
        sqlx::query(sql).bind(id).execute(pool).await.unwrap();
    };
    let exhausted = app.submit_ok(json!({"prompt": "claims: exhausted"})).await;
    set(
        "UPDATE generation_requests SET status = 'running', attempts = max_attempts,
             claimed_by = 'dead', lease_expires_at = NOW() - INTERVAL '1 second' WHERE id = $1",
        exhausted,
    )
    .await;
    let expired = app.submit_ok(json!({"prompt": "claims: expired"})).await;
    set(
        "UPDATE generation_requests SET status = 'running', attempts = 1,
             claimed_by = 'dead', lease_expires_at = NOW() - INTERVAL '1 second' WHERE id = $1",
        expired,
    )
    .await;
    set(
        "INSERT INTO generation_attempts (request_id, attempt, run, worker) VALUES ($1, 1, 1, 'dead')",
        expired,
    )
    .await;
    let finished = app.submit_ok(json!({"prompt": "claims: finished"})).await;
    set(
        "UPDATE generation_requests SET status = 'completed', completed_at = NOW() WHERE id = $1",
        finished,
    )
    .await;
    let held = app.submit_ok(json!({"prompt": "claims: held"})).await;
    set(
        "UPDATE generation_requests SET status = 'running', attempts = 1,
             claimed_by = 'alive', lease_expires_at = NOW() + INTERVAL '1 minute' WHERE id = $1",
        held,
    )
    .await;
    let pending = app.submit_ok(json!({"prompt": "claims: pending"})).await;
    let missing = Uuid::now_v7();

    // `pending` three times in the batch: claimed once, by its first occurrence.
    let ids = [
        pending, exhausted, missing, pending, finished, expired, held, pending,
    ];
    let answers: Vec<Claim> = requests::claim_many(pool, &ids, WORKER, LEASE)
        .await
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(answers.len(), ids.len());
    let mut answers = answers.into_iter();
    let first = claimed(answers.next().unwrap());
    assert_eq!(
        (first.id, first.attempts, first.first_attempt),
        (pending, 1, 1)
    );
    assert!(matches!(answers.next(), Some(Claim::Exhausted)));
    assert!(matches!(answers.next(), Some(Claim::NotFound)));
    assert!(matches!(answers.next(), Some(Claim::HeldElsewhere { .. })));
    assert!(matches!(answers.next(), Some(Claim::Finished)));
    let reclaimed = claimed(answers.next().unwrap());
    assert_eq!(
        (reclaimed.id, reclaimed.attempts, reclaimed.first_attempt),
        (expired, 2, 2)
    );
    assert!(
        matches!(answers.next(), Some(Claim::HeldElsewhere { until }) if until > chrono::Utc::now())
    );
    assert!(matches!(answers.next(), Some(Claim::HeldElsewhere { .. })));

    let db = &app.db;
    let count = |sql: String| async move { db.count(&sql).await };
    assert_eq!(
        count(format!(
            "SELECT COUNT(*) FROM generation_attempts WHERE request_id = '{pending}'"
        ))
        .await,
        1,
        "one claim, one attempt row"
    );
    assert_eq!(
        count(format!(
            "SELECT COUNT(*) FROM generation_attempts WHERE request_id = '{expired}'
               AND ((attempt = 1 AND outcome = 'abandoned' AND error_kind = 'worker_lost')
                 OR (attempt = 2 AND outcome = 'running' AND run = 2 AND worker = '{WORKER}'))"
        ))
        .await,
        2
    );
    assert_eq!(
        count(format!(
            "SELECT COUNT(*) FROM generation_requests WHERE id = '{exhausted}'
               AND status = 'failed' AND error_code = 'attempts_exhausted'"
        ))
        .await,
        1
    );
    assert_eq!(
        count(format!(
            "SELECT COUNT(*) FROM outbox_events WHERE request_id = '{exhausted}'
               AND type = 'generation.failed'"
        ))
        .await,
        1
    );
    assert_eq!(
        count(format!(
            "SELECT COUNT(*) FROM generation_requests WHERE id = '{held}' AND claimed_by = 'alive'"
        ))
        .await,
        1,
        "a live holder keeps its request"
    );
}

#[tokio::test]
async fn a_row_the_statement_refuses_fails_only_its_own_caller() {
    let app = spawn_app().await;
    let (ids, claims) = three_claimed(&app, "refused row").await;
    let mut outputs: Vec<_> = (0..3).map(output).collect();
    // Longer than `finish_reason VARCHAR(50)`: the database refuses this row, and with it the
    // whole statement.
    outputs[1].finish_reason = "x".repeat(60);
    let rows: Vec<_> = claims
        .iter()
        .zip(&outputs)
        .map(|(c, o)| row(c, o))
        .collect();
    assert!(
        requests::complete_many(&app.db.pool, WORKER, &rows)
            .await
            .is_err()
    );

    let answers = requests::complete_each(&app.db.pool, WORKER, &rows).await;
    assert_eq!(answers.len(), 3);
    assert!(matches!(answers[0], Ok(true)), "{:?}", answers[0]);
    match &answers[1] {
        Err(err) => assert!(!is_unavailable(err), "{err}"),
        Ok(held) => panic!("the refused row answered {held}"),
    }
    assert!(matches!(answers[2], Ok(true)), "{:?}", answers[2]);
    assert_eq!(
        app.db
            .count("SELECT SUM(requests)::bigint FROM usage_daily")
            .await,
        2
    );
    let status: String = sqlx::query_scalar("SELECT status FROM generation_requests WHERE id = $1")
        .bind(ids[1])
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(status, "running", "its job is delivered again");
}

#[tokio::test]
async fn a_batch_that_cannot_reach_the_database_gives_every_caller_an_unavailable_error() {
    let app = spawn_app().await;
    let (ids, claims) = three_claimed(&app, "unreachable").await;
    let outputs: Vec<_> = (0..3).map(output).collect();
    let rows: Vec<_> = claims
        .iter()
        .zip(&outputs)
        .map(|(c, o)| row(c, o))
        .collect();
    let closed = llm_shared::db::connect_url(&app.db.url, 1).await.unwrap();
    closed.close().await;

    let claimed = requests::claim_each(&closed, &ids, WORKER, LEASE).await;
    let completed = requests::complete_each(&closed, WORKER, &rows).await;
    assert_eq!((claimed.len(), completed.len()), (3, 3));
    for err in claimed.iter().filter_map(|a| a.as_ref().err()) {
        assert!(is_unavailable(err), "{err}");
    }
    for err in completed.iter().filter_map(|a| a.as_ref().err()) {
        assert!(is_unavailable(err), "{err}");
    }
    assert!(claimed.iter().all(Result::is_err));
    assert!(completed.iter().all(Result::is_err));
}

/// Counts of `llm_worker_batch_size{statement}`: (batches, calls).
fn batch_counts(state: &WorkerState, statement: &str) -> (u64, u64) {
    let text = state.metrics.encode().unwrap();
    let read = |suffix: &str| {
        let prefix = format!("llm_worker_batch_size_{suffix}{{statement=\"{statement}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0, |v| v.parse::<f64>().unwrap() as u64)
    };
    (read("count"), read("sum"))
}

#[tokio::test]
async fn concurrent_jobs_of_one_worker_share_batches_and_each_gets_its_own_answer() {
    let app = spawn_app().await;
    let config = worker_config(&app.db.url, &["--concurrency", "16"]);
    let state = WorkerState::new(
        app.db.pool.clone(),
        WORKER.into(),
        &config,
        worker_models(&config),
        None,
        None,
        None,
    );
    let contested = app.submit_ok(json!({"prompt": "one of us"})).await;
    let mut ids = Vec::new();
    for n in 0..15 {
        ids.push(submit_uncached(&app, &format!("together {n}")).await);
    }

    // Sixteen jobs claim at once: two deliveries of one request among them.
    let mut wanted = ids.clone();
    wanted.push(contested);
    wanted.push(contested);
    let answers = futures::future::join_all(wanted.iter().map(|&id| state.claim(id))).await;
    let answers: Vec<Claim> = answers.into_iter().map(Result::unwrap).collect();
    let mut claims = Vec::new();
    let mut held_elsewhere = 0;
    for (id, answer) in wanted.iter().zip(answers) {
        match answer {
            Claim::Claimed(c) => {
                assert_eq!(c.id, *id, "each job gets its own request back");
                claims.push(*c);
            }
            Claim::HeldElsewhere { .. } => held_elsewhere += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        claims.len(),
        16,
        "fifteen requests and the contested one, once"
    );
    assert_eq!(held_elsewhere, 1);
    let (batches, calls) = batch_counts(&state, "claim");
    assert_eq!(calls, 17);
    assert!(
        batches < 17,
        "claims waiting together share a statement: {batches}"
    );

    lose_lease(&app, ids[3]).await;
    let outputs: Vec<_> = (0..claims.len() as u32).map(output).collect();
    let completions: Vec<_> = claims
        .iter()
        .zip(&outputs)
        .map(|(claimed, output)| Success {
            attempt: claimed.first_attempt,
            provider: "mock",
            served_model: &claimed.model,
            output,
            latency: Duration::from_millis(1),
            cost_usd: 0.0,
            cache_ttl: Duration::from_secs(60),
        })
        .collect();
    let held = futures::future::join_all(
        claims
            .iter()
            .zip(&completions)
            .map(|(claimed, completion)| state.complete(claimed, completion)),
    )
    .await;
    for (claimed, held) in claims.iter().zip(held) {
        assert_eq!(held.unwrap(), claimed.id != ids[3], "{}", claimed.id);
    }
    let (batches, calls) = batch_counts(&state, "complete");
    assert_eq!(calls, 16);
    assert!(
        batches < 16,
        "completions waiting together share a statement: {batches}"
    );
    assert_eq!(
        app.db
            .count("SELECT SUM(requests)::bigint FROM usage_daily")
            .await,
        15
    );
    for (claimed, output) in claims.iter().zip(&outputs) {
        if claimed.id == ids[3] {
            continue;
        }
        let result: Option<String> =
            sqlx::query_scalar("SELECT result FROM generation_requests WHERE id = $1")
                .bind(claimed.id)
                .fetch_one(&app.db.pool)
                .await
                .unwrap();
        assert_eq!(result.as_deref(), Some(output.text.as_str()));
    }
}

/// A connection set up as every connection of a group-commit writer is (`db::writer_pool`).
async fn writer_connection(app: &TestApp) -> sqlx::pool::PoolConnection<sqlx::Postgres> {
    let mut conn = app.db.pool.acquire().await.unwrap();
    for (name, value) in llm_shared::db::WRITER_SETTINGS {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET {name} = {value}")))
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    conn
}

/// The submit writer's statement (`requests::insert_many`).
fn insert_many_statement() -> String {
    requests::writer_statements()
        .into_iter()
        .find(|(name, _)| *name == "insert_many")
        .map(|(_, sql)| sql)
        .unwrap()
}

/// BY_ID_ONLY (`requests`) and `db::WRITER_SETTINGS`: whatever the statistics say, every
/// statement a group-commit writer runs finds its rows through an index, and the batched by-id
/// ones through the primary key. Two states of the table: empty (a new deployment, a truncate;
/// a plan made then is kept as the table grows, and on so few pages a sequential scan is
/// cheapest), and a backlog of 20,000 rows the planner has no statistics for (through a status
/// index, each statement walked the whole backlog; through the unfinished requests' age index,
/// each submit's in-flight lookup did).
#[tokio::test]
async fn batched_statements_find_their_rows_by_id_whatever_the_statistics() {
    let app = spawn_app().await;
    let mut conn = writer_connection(&app).await;
    // A cache holding a few live entries (a deployment's first minutes): few enough that
    // reading them all looked cheaper than one lookup per request.
    sqlx::query(
        "INSERT INTO response_cache (cache_key, response, prompt, model, expires_at)
         SELECT 'key-' || g, 'an answer', 'a prompt', 'mock', NOW() + INTERVAL '1 hour'
         FROM generate_series(1, 40) g",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::raw_sql("ANALYZE generation_requests; ANALYZE response_cache")
        .execute(&mut *conn)
        .await
        .unwrap();
    for backlog in [0, 20_000] {
        sqlx::query(
            // Prompts of a realistic length.
            "INSERT INTO generation_requests (id, prompt, model, user_id, job_id, status)
             SELECT gen_random_uuid(), repeat('a backlog prompt ', 16), 'mock', gen_random_uuid(),
                    'job-' || g, CASE WHEN g % 10 = 0 THEN 'running' ELSE 'pending' END
             FROM generate_series(1, $1) g",
        )
        .bind(backlog)
        .execute(&mut *conn)
        .await
        .unwrap();
        for (name, sql) in requests::writer_statements() {
            let plan = llm_tests::generic_plan(&mut conn, &sql).await;
            assert!(
                !plan.contains("Seq Scan"),
                "{name} scans a table ({backlog} requests):\n{plan}"
            );
        }
        // A cache miss looks for the identical request in flight by its key, oldest first: by
        // the key, never by walking the unfinished requests in age order until one matches.
        let insert = llm_tests::generic_plan(&mut conn, &insert_many_statement()).await;
        assert!(
            insert.contains("generation_requests_inflight_by_key_idx")
                && !insert.contains("generation_requests_unfinished_by_age_idx"),
            "the in-flight lookup does not read by key ({backlog} requests):\n{insert}"
        );
        // And the cache entry of each by its key: a join with the live entries read them all
        // (through their expiry index), every entry per submit once the cache filled.
        let lines: Vec<&str> = insert.lines().map(str::trim).collect();
        let cache_reads: Vec<&[&str]> = lines
            .windows(2)
            .filter(|pair| pair[0].contains(" on response_cache "))
            .collect();
        assert!(
            !cache_reads.is_empty()
                && cache_reads
                    .iter()
                    .all(|pair| pair[1].starts_with("Index Cond: ((cache_key)::text =")),
            "the cache lookup does not read by key ({backlog} requests):\n{insert}"
        );
        for (name, sql) in requests::by_id_statements() {
            let plan = llm_tests::generic_plan(&mut conn, &sql).await;
            assert!(
                !plan.contains("generation_requests_unfinished_by_age_idx")
                    && !plan.contains("generation_requests_errored_idx"),
                "{name} reads requests through a status index ({backlog} requests):\n{plan}"
            );
            assert!(
                plan.contains("generation_requests_pkey"),
                "{name} does not read requests by id ({backlog} requests):\n{plan}"
            );
        }
    }
}

/// The in-flight lookup on a new deployment's table, which no ANALYZE has read yet (the planner
/// then assumes its size from its pages), as it fills: with a few hundred rows the planner
/// priced the unfinished requests' age index like the in-flight index and took it, and a
/// writer connection kept that generic plan as the backlog grew (the benchmark's submits ran
/// at half speed in about half its runs). The lookup can no longer be answered through the
/// age index (migration 20261205000003).
#[tokio::test]
async fn the_in_flight_lookup_reads_by_key_on_a_table_never_analyzed() {
    let app = spawn_app().await;
    let mut conn = writer_connection(&app).await;
    let insert = insert_many_statement();
    let mut backlog = 0;
    for more in [0, 1, 9, 40, 50, 100, 200, 400, 1_000, 3_000] {
        // Requests in flight, each with its own key, as submits of distinct prompts leave them.
        sqlx::query(
            "INSERT INTO generation_requests (id, prompt, model, user_id, job_id, status, cache_key)
             SELECT gen_random_uuid(), repeat('a backlog prompt ', 16), 'mock', gen_random_uuid(),
                    'job-' || g, 'pending', 'v1:' || md5(g::text || random()::text)
             FROM generate_series(1, $1) g",
        )
        .bind(more)
        .execute(&mut *conn)
        .await
        .unwrap();
        backlog += more;
        let plan = llm_tests::generic_plan(&mut conn, &insert).await;
        assert!(
            plan.contains("generation_requests_inflight_by_key_idx")
                && !plan.contains("generation_requests_unfinished_by_age_idx"),
            "the in-flight lookup does not read by key ({backlog} requests, never analyzed):\n{plan}"
        );
    }
}
