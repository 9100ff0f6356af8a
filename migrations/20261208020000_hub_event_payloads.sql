-- The payloads of the hub's events about a request that ended, defined once for every
-- statement that writes them to the outbox: a worker's completion and the followers completed
-- with it (`complete_many.sql`), cache hits stored at submit (`insert_many.sql`,
-- `insert_hits.sql`), and cancellations (`requests/sql/cancel.sql`,
-- `openai_batches/sql/cancel.sql`). Plain SQL functions, inlined by the planner into the
-- statements that call them: STABLE, as `jsonb_build_object` is (declared IMMUTABLE, they
-- were called row by row instead, ~2 µs of PostgreSQL's CPU more per cache hit stored).
--
-- Safe while the previous release runs: new functions, which it does not call.

-- `generation.completed`: a request completed, by a provider or from the cache (`cached`).
CREATE FUNCTION hub_completed_payload(
    request_id uuid, user_id uuid, model text, provider text, prompt_tokens int,
    completion_tokens int, cost_usd float8, cached bool
) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT jsonb_build_object('request_id', request_id, 'user_id', user_id, 'model', model,
        'provider', provider, 'prompt_tokens', prompt_tokens,
        'completion_tokens', completion_tokens, 'cost_usd', cost_usd, 'cached', cached)
$$;

-- `usage.updated`: what was added to `usage_daily` today for `user_id` and `model` (one
-- request's, or the cache hits' stored by one statement).
CREATE FUNCTION hub_usage_payload(
    user_id uuid, model text, requests bigint, cached_requests bigint, prompt_tokens bigint,
    completion_tokens bigint, cost_usd float8
) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT jsonb_build_object('user_id', user_id, 'model', model,
        'day', (NOW() AT TIME ZONE 'UTC')::date, 'requests', requests,
        'cached_requests', cached_requests, 'prompt_tokens', prompt_tokens,
        'completion_tokens', completion_tokens, 'cost_usd', cost_usd)
$$;

-- `generation.cancelled`: the owner, an admin or a batch's cancellation cancelled the request.
CREATE FUNCTION hub_cancelled_payload(request_id uuid, user_id uuid, model text, reason text)
RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT jsonb_build_object('request_id', request_id, 'user_id', user_id, 'model', model,
                              'error_code', 'cancelled', 'error_message', reason)
$$;
