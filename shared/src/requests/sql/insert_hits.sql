-- Stores cache hits answered before their rows were written (`hits.rs`), counts them in
-- `usage_daily` and queues their hub events (`hub_*_payload`), in one statement: the rows as they are, completed, and their usage counted
-- beforehand. A hit answered early has no Idempotency-Key (nothing to conflict with), no job
-- and nothing to look up, so none of `insert_many.sql`'s decisions are made here. Without them
-- (no cache lookup, no in-flight lookup, no ON CONFLICT, no RETURNING rows joined back to the
-- input), PostgreSQL's CPU per hit went from ~21 to ~16.5 µs (wrk, 16 connections).
--
-- Parameters, one array per column, one element per hit (see `columns.rs`):
--   $1 id uuid[]                $2 prompt text[]            $3 context jsonb[]
--   $4 model text[]             $5 user_id uuid[]           $6 metadata jsonb[]
--   $7 parameters jsonb[]       $8 job_id text[]            $9 max_attempts int4[]
--   $10 stream bool[]           $11 cache_key text[]        $12 cache_policy jsonb[]
--   $13 estimated_tokens int4[] $14 trace_id text[]
--   $15..$21 the cached answer: result text[], provider text[], provider_model text[],
--       served_model text[], prompt_tokens int4[], completion_tokens int4[],
--       finish_reason text[]
--   $22 tool_calls jsonb[]      the cached tool calls (NULL: none)
-- and the usage counters to add to, one element per user and model:
--   $23 user_id uuid[]          $24 model text[]            $25 hits int8[]
WITH stored AS (
    INSERT INTO generation_requests
        (id, prompt, context, model, user_id, metadata, parameters, job_id,
        max_attempts, stream, cache_key, cache_policy, estimated_tokens, trace_id, result,
        provider, provider_model, served_model, prompt_tokens, completion_tokens, finish_reason,
        tool_calls, tokens_used, status, cached, cost_usd, completed_at)
    SELECT *, prompt_tokens + completion_tokens, 'completed', true, 0, NOW()
    FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::text[], $5::uuid[],
        $6::jsonb[], $7::jsonb[], $8::text[], $9::int4[], $10::bool[], $11::text[], $12::jsonb[],
        $13::int4[], $14::text[], $15::text[], $16::text[], $17::text[], $18::text[],
        $19::int4[], $20::int4[], $21::text[], $22::jsonb[])
    AS v(id, prompt, context, model, user_id, metadata, parameters, job_id,
        max_attempts, stream, cache_key, cache_policy, estimated_tokens, trace_id, result,
        provider, provider_model, served_model, prompt_tokens, completion_tokens, finish_reason,
        tool_calls)
    RETURNING id, user_id, model, provider, prompt_tokens, completion_tokens
), hit_counts AS (
    SELECT * FROM unnest($23::uuid[], $24::text[], $25::int8[]) AS c(user_id, model, n)
), events AS (
    -- for the hub: each hit's `generation.completed`, then one `usage.updated` per user and
    -- model for the hits stored here (one event per hit doubled the statement's cost)
    INSERT INTO outbox_events (id, request_id, type, payload)
    SELECT gen_random_uuid(), request_id, type, payload FROM (
        SELECT 1 AS nth, s.id AS request_id, 'generation.completed' AS type,
               hub_completed_payload(s.id, s.user_id, s.model, s.provider, s.prompt_tokens,
                   s.completion_tokens, 0, true) AS payload
        FROM stored s
        UNION ALL
        SELECT 2, NULL, 'usage.updated', hub_usage_payload(c.user_id, c.model, c.n, c.n, 0, 0, 0)
        FROM hit_counts c
    ) e ORDER BY nth
)
-- The hits' usage (no provider tokens, no cost), one counter row per user and model (an upsert
-- may touch a row only once per statement), in key order, so that two statements never
-- deadlock on counters. The shard (0-15) is one per statement (an uncorrelated subquery,
-- evaluated once), so two concurrent batches meet on the same counter row (and wait for each
-- other's commit) only one time in 16.
INSERT INTO usage_daily AS u (user_id, day, model, shard, requests, cached_requests)
SELECT user_id, (NOW() AT TIME ZONE 'UTC')::date, model, (SELECT floor(random() * 16)::int), n, n
FROM (SELECT user_id, model, n FROM hit_counts) hits
ORDER BY user_id, model
ON CONFLICT (user_id, day, model, shard) DO UPDATE
SET requests = u.requests + EXCLUDED.requests,
    cached_requests = u.cached_requests + EXCLUDED.cached_requests
