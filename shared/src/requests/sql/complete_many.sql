-- Completes a batch of claimed requests and records their successful attempts, in one
-- statement. Each row is guarded by its own claim (running, held by this worker, same run); for
-- those still held it also completes the identical requests that waited for them (as cache
-- hits), adds their usage, queues the hub's events of both (`hub_*_payload`) and
-- stores their results in the cache table. Answers the ordinal (from 1) of each row still held.
--
-- Parameters:
--   $1 worker text
--   one array per column, one element per completion (`SuccessRow`):
--   $2 id uuid[]            $3 run int[]              $4 attempt int[]
--   $5 result text[]        $6 provider text[]        $7 provider_model text[]
--   $8 prompt_tokens int[]  $9 completion_tokens int[] $10 finish_reason text[]
--   $11 latency_ms int[]    $12 served_model text[]   $13 cost_usd float8[]
--   $14 store_key text[]    the cache key to store the result under (NULL: not stored)
--   $15 ttl_secs float8[]   $16 metadata jsonb[]      the cache entry's
--   $17 tool_calls jsonb[]  the tools the model called (NULL: none)
WITH v AS (
    SELECT * FROM unnest($2::uuid[], $3::int[], $4::int[], $5::text[], $6::text[],
                         $7::text[], $8::int[], $9::int[], $10::text[], $11::int[],
                         $12::text[], $13::float8[], $14::text[], $15::float8[],
                         $16::jsonb[], $17::jsonb[])
        WITH ORDINALITY AS v(id, run, attempt, result, provider, provider_model,
                             prompt_tokens, completion_tokens, finish_reason, latency_ms,
                             served_model, cost_usd, store_key, ttl_secs, metadata, tool_calls,
                             ord)
), locked AS (
    -- in id order, as every batched statement on this table (LOCK_ORDER in claim_many.sql)
    SELECT r.id
    FROM generation_requests r
    JOIN v ON r.id = v.id
    -- found by id (see BY_ID_ONLY), still held by this claim
    WHERE CASE r.status WHEN 'running' THEN true ELSE false END
      AND r.claimed_by = $1 AND r.attempts = v.run
    ORDER BY r.id
    FOR UPDATE OF r
), done AS (
    UPDATE generation_requests r
    SET status = 'completed', result = v.result, provider = v.provider,
        provider_model = v.provider_model, prompt_tokens = v.prompt_tokens,
        completion_tokens = v.completion_tokens,
        tokens_used = v.prompt_tokens + v.completion_tokens,
        finish_reason = v.finish_reason, tool_calls = v.tool_calls,
        served_model = v.served_model, cost_usd = v.cost_usd, error_code = NULL, error_message = NULL,
        completed_at = NOW(), updated_at = NOW(), claimed_by = NULL, lease_expires_at = NULL
    FROM v JOIN locked ON locked.id = v.id
    WHERE r.id = v.id AND CASE r.status WHEN 'running' THEN true ELSE false END
      AND r.claimed_by = $1 AND r.attempts = v.run
    RETURNING v.*, r.user_id, r.prompt, r.model
), followers AS (
    -- identical requests that waited for one of these: answered with it, as cache hits
    UPDATE generation_requests f
    SET status = 'completed', result = v.result, provider = v.provider,
        provider_model = v.provider_model, prompt_tokens = v.prompt_tokens,
        completion_tokens = v.completion_tokens,
        tokens_used = v.prompt_tokens + v.completion_tokens,
        finish_reason = v.finish_reason, tool_calls = v.tool_calls,
        served_model = v.served_model, cost_usd = 0,
        cached = true, completed_at = NOW(), updated_at = NOW()
    FROM done v
    WHERE f.coalesced_into = v.id AND CASE f.status WHEN 'pending' THEN true ELSE false END
    RETURNING f.id, f.user_id, f.model, v.provider, v.prompt_tokens, v.completion_tokens,
              v.ord, v.id AS leader
), usage AS (
    -- one row per key: a statement may not update a row twice. The shard (0-15) is one per
    -- statement (an uncorrelated subquery, evaluated once), so a batch updates one counter row
    -- per user and model, and two concurrent batches meet on the same row (and wait for each
    -- other's commit) only one time in 16.
    INSERT INTO usage_daily AS u
        (user_id, day, model, shard, requests, cached_requests, prompt_tokens,
         completion_tokens, cost_usd)
    SELECT user_id, (NOW() AT TIME ZONE 'UTC')::date, model, (SELECT floor(random() * 16)::int),
           SUM(requests), SUM(cached), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost)
    FROM (SELECT v.user_id, v.served_model::varchar AS model, 1 AS requests,
                 0 AS cached, v.prompt_tokens::bigint AS prompt_tokens,
                 v.completion_tokens::bigint AS completion_tokens, v.cost_usd AS cost
          FROM done v
          UNION ALL
          SELECT user_id, model, 1, 1, 0, 0, 0
          FROM followers) counted
    GROUP BY user_id, model
    ORDER BY user_id, model
    ON CONFLICT (user_id, day, model, shard) DO UPDATE
    SET requests = u.requests + EXCLUDED.requests,
        cached_requests = u.cached_requests + EXCLUDED.cached_requests,
        prompt_tokens = u.prompt_tokens + EXCLUDED.prompt_tokens,
        completion_tokens = u.completion_tokens + EXCLUDED.completion_tokens,
        cost_usd = u.cost_usd + EXCLUDED.cost_usd
), events AS (
    -- for the message hub, in this transaction: a completion is never lost. Per request,
    -- `generation.completed` before `usage.updated`; each follower's (a cache hit's, under the
    -- model its usage is counted for) after its leader's.
    INSERT INTO outbox_events (id, request_id, type, payload)
    SELECT gen_random_uuid(), c.id, e.type, e.payload
    FROM (SELECT v.ord, 0 AS follower, v.id, v.user_id, v.served_model AS model, v.provider,
                 v.prompt_tokens, v.completion_tokens, v.cost_usd, false AS cached
          FROM done v
          UNION ALL
          SELECT f.ord, 1, f.id, f.user_id, f.model, f.provider, f.prompt_tokens,
                 f.completion_tokens, 0, true
          FROM followers f) c
    CROSS JOIN LATERAL (VALUES
        (1, 'generation.completed', hub_completed_payload(c.id, c.user_id, c.model,
            c.provider, c.prompt_tokens, c.completion_tokens, c.cost_usd, c.cached)),
        (2, 'usage.updated', CASE WHEN c.cached
            THEN hub_usage_payload(c.user_id, c.model, 1, 1, 0, 0, 0)
            ELSE hub_usage_payload(c.user_id, c.model, 1, 0, c.prompt_tokens,
                c.completion_tokens, c.cost_usd) END)
    ) e(nth, type, payload)
    ORDER BY c.ord, c.follower, c.id, e.nth
), stored AS (
    -- one entry per key (a statement may not update a row twice): the later result
    INSERT INTO response_cache (cache_key, response, prompt, model, expires_at, metadata)
    SELECT DISTINCT ON (v.store_key) v.store_key, v.result, v.prompt, v.model,
           NOW() + make_interval(secs => v.ttl_secs), v.metadata
    FROM done v
    WHERE v.store_key IS NOT NULL
    ORDER BY v.store_key, v.ord DESC
    ON CONFLICT (cache_key) DO UPDATE
    SET response = EXCLUDED.response, expires_at = EXCLUDED.expires_at,
        metadata = EXCLUDED.metadata, created_at = NOW()
)
UPDATE generation_attempts a
SET outcome = 'succeeded', finished_at = NOW(), latency_ms = v.latency_ms,
    provider = v.provider, model = v.provider_model, prompt_tokens = v.prompt_tokens,
    completion_tokens = v.completion_tokens
FROM done v
WHERE a.request_id = v.id AND a.attempt = v.attempt
RETURNING v.ord
