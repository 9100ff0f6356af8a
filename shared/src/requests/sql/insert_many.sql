-- Stores a batch of submitted requests in one statement (atomic, one round trip), each row as
-- its `Insert` says: completed from the cache (the answer it comes with, or the cache table's
-- live entry), pending as the follower of an identical request in flight, or pending with its
-- apalis job, placed by fair share within its class (its `run_at`, see `queue.rs`). Cache
-- hits are counted in `usage_daily`, and their hub events queued (`hub_*_payload`).
-- A row whose Idempotency-Key its user used before is not stored (ON CONFLICT DO NOTHING): the
-- caller reads the earlier one.
-- Answers (id, cached, durable) of each row stored; `durable`: whether its commit waits for the
-- disk (the connection's `synchronous_commit`, see `db::ASYNC_WRITER_SETTINGS`).
--
-- Parameters, one array per column, one element per request (see `columns.rs`):
--   $1 id uuid[]                $2 prompt text[]            $3 context jsonb[]
--   $4 model text[]             $5 user_id uuid[]           $6 metadata jsonb[]
--   $7 parameters jsonb[]       $8 job_id text[]            $9 max_attempts int4[]
--   $10 stream bool[]           $11 cache_key text[]        $12 cache_policy jsonb[]
--   $13 estimated_tokens int4[] $14 trace_id text[]
--   $15..$21 the answer a fast-copy cache hit comes with (NULL otherwise): result text[],
--       provider text[], provider_model text[], served_model text[], prompt_tokens int4[],
--       completion_tokens int4[], finish_reason text[]
--   $22 idempotency_key text[]
--   $23 lookup_key text[]       the cache key to look up in the table (NULL: no lookup)
--   $24 job bytea[]             the job's arguments, as apalis' JSON codec decodes them
--   $25 job_max_attempts int4[] $26 priority int4[]
--   $27 tool_calls jsonb[]      the tool calls a fast-copy cache hit comes with (NULL otherwise)
--   $28 outcome_in_notice bool  whether the rows' completion notices carry their outcomes
--       (migration 20261210000001)
--   $29 attempts_in_notice bool  and their attempt histories (migration 20261211000001)
--
-- The job row is the one apalis-postgres' own sink writes (`queries/task/sink.sql`): job type
-- `queue::QUEUE` (spelt out below; a unit test checks they agree), status `Pending`, no
-- attempts yet, an empty `metadata`; but its `run_at` is its virtual time (always due).
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::text[], $5::uuid[],
        $6::jsonb[], $7::jsonb[], $8::text[], $9::int4[], $10::bool[], $11::text[], $12::jsonb[],
        $13::int4[], $14::text[], $15::text[], $16::text[], $17::text[], $18::text[],
        $19::int4[], $20::int4[], $21::text[], $22::text[], $23::text[], $24::bytea[],
        $25::int4[], $26::int4[], $27::jsonb[]) WITH ORDINALITY
    AS v(id, prompt, context, model, user_id, metadata, parameters, job_id,
        max_attempts, stream, cache_key, cache_policy, estimated_tokens, trace_id, result,
        provider, provider_model, served_model, prompt_tokens, completion_tokens, finish_reason,
        idempotency_key, lookup_key, job, job_max_attempts, priority, tool_calls, ord)
), answered AS (
    -- the answer a request comes with (a fast-copy hit), or the cache table's
    SELECT v.id, v.prompt, v.context, v.model, v.user_id, v.metadata, v.parameters,
           v.job_id, v.max_attempts, v.idempotency_key, v.stream, v.cache_key,
           v.cache_policy, v.estimated_tokens, v.lookup_key, v.trace_id, v.ord,
           COALESCE(v.result, c.response) AS result,
           COALESCE(v.provider, c.provider) AS provider,
           COALESCE(v.provider_model, c.provider_model) AS provider_model,
           COALESCE(v.served_model, c.served_model) AS served_model,
           COALESCE(v.prompt_tokens, c.prompt_tokens) AS prompt_tokens,
           COALESCE(v.completion_tokens, c.completion_tokens) AS completion_tokens,
           COALESCE(v.finish_reason, c.finish_reason) AS finish_reason,
           -- the calls go with the result they came with (a hit's, or the entry's)
           CASE WHEN v.result IS NOT NULL THEN v.tool_calls ELSE c.tool_calls END AS tool_calls
    FROM input v LEFT JOIN LATERAL (
        -- The live table entry of the key `lookup_key`: the columns of a `CachedResponse`,
        -- read from the row's `metadata` as `cache::metadata_of` writes it. No row when the
        -- key is NULL, unknown or expired.
        --
        -- `LIMIT 1` (the key is the primary key: one row at most) keeps the lookup a subquery
        -- run per request by its key: as a join, the planner, seeing a few dozen entries, read
        -- every live one and hashed them, and kept that plan as the cache filled (every entry
        -- read per submit).
        SELECT response, metadata->>'provider' AS provider,
            metadata->>'provider_model' AS provider_model, metadata->>'served_model' AS served_model,
            (metadata->>'prompt_tokens')::int AS prompt_tokens,
            (metadata->>'completion_tokens')::int AS completion_tokens,
            metadata->>'finish_reason' AS finish_reason,
            NULLIF(metadata->'tool_calls', 'null'::jsonb) AS tool_calls
        FROM response_cache
        WHERE cache_key = lookup_key AND (expires_at IS NULL OR expires_at > NOW())
        LIMIT 1
    ) c ON true
), inserted AS (
INSERT INTO generation_requests
    (id, prompt, context, model, user_id, metadata, parameters, job_id, max_attempts,
     idempotency_key, stream, cache_key, cache_policy, estimated_tokens, status,
     coalesced_into, result, provider, provider_model, served_model, prompt_tokens,
     completion_tokens, tokens_used, finish_reason, cached, cost_usd, completed_at,
     trace_id, tool_calls, outcome_in_notice, attempts_in_notice)
SELECT id, prompt, context, model, user_id, metadata, parameters, job_id, max_attempts,
       idempotency_key, stream, cache_key, cache_policy, estimated_tokens,
       CASE WHEN result IS NOT NULL THEN 'completed' ELSE 'pending' END,
       -- unanswered: the identical request in flight, if this one may follow it;
       -- unfinished spelt as the in-flight index spells it, which the age index's
       -- predicate is not implied by (migration 20261205000003)
       CASE WHEN result IS NULL THEN
           (SELECT f.id FROM generation_requests f
            WHERE a.lookup_key IS NOT NULL AND f.cache_key = a.lookup_key
              AND (f.completed_at IS NULL) IS TRUE AND f.coalesced_into IS NULL
              AND NOT (f.cache_policy @> '{"no_store": true}')
            ORDER BY f.created_at LIMIT 1)
       END,
       result, provider, provider_model, served_model, prompt_tokens,
       completion_tokens, prompt_tokens + completion_tokens, finish_reason,
       result IS NOT NULL, CASE WHEN result IS NOT NULL THEN 0 END,
       CASE WHEN result IS NOT NULL THEN NOW() END, trace_id, tool_calls,
       -- a hit is stored final: it has no notice to carry anything (as `insert_hits.sql`)
       $28::bool AND result IS NULL, $29::bool AND result IS NULL
-- in the callers' order: of two rows with one Idempotency-Key, the first is stored
FROM answered a ORDER BY ord
ON CONFLICT (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id, coalesced_into, user_id, model, cached, provider, prompt_tokens, completion_tokens
), hits AS (
    SELECT user_id, model, COUNT(*) AS n FROM inserted WHERE cached GROUP BY user_id, model
), events AS (
    -- for the hub: each cache hit's `generation.completed`, then one `usage.updated` per user
    -- and model for the hits stored here (as `insert_hits.sql`)
    INSERT INTO outbox_events (id, request_id, type, payload)
    SELECT gen_random_uuid(), request_id, type, payload FROM (
        SELECT 1 AS nth, i.id AS request_id, 'generation.completed' AS type,
               hub_completed_payload(i.id, i.user_id, i.model, i.provider, i.prompt_tokens,
                   i.completion_tokens, 0, true) AS payload
        FROM inserted i WHERE i.cached
        UNION ALL
        SELECT 2, NULL, 'usage.updated', hub_usage_payload(h.user_id, h.model, h.n, h.n, 0, 0, 0)
        FROM hits h
    ) e ORDER BY nth
), usage AS (
    -- the cache hits' usage (no provider tokens, no cost), one counter row per user and model:
    -- an upsert may touch a row only once per statement, and rows in key order, so that two
    -- statements never deadlock on counters. The shard (0-15) is one per statement (an
    -- uncorrelated subquery, evaluated once), so two concurrent batches meet on the same
    -- counter row (and wait for each other's commit) only one time in 16.
    INSERT INTO usage_daily AS u (user_id, day, model, shard, requests, cached_requests)
    SELECT user_id, (NOW() AT TIME ZONE 'UTC')::date, model, (SELECT floor(random() * 16)::int), n, n
    FROM hits
    ORDER BY user_id, model
    ON CONFLICT (user_id, day, model, shard) DO UPDATE
    SET requests = u.requests + EXCLUDED.requests,
        cached_requests = u.cached_requests + EXCLUDED.cached_requests
), queued AS (
    -- the rows that get a job, numbered per user and class in the callers' order
    SELECT v.id, v.job_id, v.job, v.job_max_attempts, v.user_id, v.priority AS class,
           row_number() OVER (PARTITION BY v.user_id, v.priority ORDER BY v.ord) AS k
    FROM inserted JOIN input v USING (id)
    WHERE NOT inserted.cached AND inserted.coalesced_into IS NULL
), demand AS (
    -- per user and class: how many jobs, and the virtual time each costs (1 ms / weight)
    -- and the class's virtual time (read once per class)
    SELECT q.user_id, q.class, q.n, c.clock,
           make_interval(secs => 0.001 / COALESCE(o.weight, 1)) AS cost
    FROM (SELECT user_id, class, COUNT(*) AS n FROM queued GROUP BY user_id, class) q
    JOIN (SELECT class, fair_share_clock(class) AS clock
          FROM (SELECT DISTINCT class FROM queued) classes) c USING (class)
    LEFT JOIN rate_limit_overrides o ON o.user_id = q.user_id
), shares AS (
    -- each user's virtual finish time moves on by its jobs' cost, from the class's virtual
    -- time or its own if later (its backlog). Rows in key order, so that two statements never
    -- deadlock; the row lock makes concurrent statements of one user take turns, so their
    -- jobs get consecutive times.
    INSERT INTO fair_share AS f (user_id, class, finish_at)
    SELECT d.user_id, d.class, d.clock + d.cost * d.n
    FROM demand d
    ORDER BY d.user_id, d.class
    ON CONFLICT (user_id, class) DO UPDATE
    SET finish_at = (SELECT GREATEST(f.finish_at, d.clock) + d.cost * d.n FROM demand d
                     WHERE d.user_id = f.user_id AND d.class = f.class)
    RETURNING f.user_id, f.class, f.finish_at
), job AS (
    -- a job's virtual start time is its `run_at` (see migrations/20261206000005_fair_share.sql):
    -- the user's k-th of n jobs here gets the k-th of the n times its share just moved through
    INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, priority, metadata)
    SELECT q.job_id, 'llm::generation', q.job, 'Pending', 0, q.job_max_attempts,
           LEAST(s.finish_at - d.cost * (d.n - q.k), TIMESTAMPTZ '1999-12-31 00:00:00+00'),
           q.class, ''::hstore
    FROM queued q
    JOIN demand d USING (user_id, class)
    JOIN shares s USING (user_id, class)
)
SELECT id, cached, current_setting('synchronous_commit') <> 'off' AS durable FROM inserted
