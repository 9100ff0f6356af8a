-- The hub's events about a request that ended, defined once for every statement that writes
-- them to the outbox: a worker's completion and the followers completed with it
-- (`complete_many.sql`), cache hits stored at submit (`insert_many.sql`, `insert_hits.sql`),
-- and cancellations (`requests/sql/cancel.sql`, `openai_batches/sql/cancel.sql`). Plain SQL
-- functions, inlined by the planner into the statements that call them.
--
-- Safe while the previous release runs: new functions, which it does not call.

-- A completed request's events in the order they are delivered (`nth`): `generation.completed`,
-- then `usage.updated` with what the request added to `usage_daily` under `model` (a cache hit:
-- one request, one cached request, no tokens, no cost).
CREATE FUNCTION hub_completion_events(
    request_id uuid, user_id uuid, model text, provider text, prompt_tokens int,
    completion_tokens int, cost_usd float8, cached bool
) RETURNS TABLE (nth int, type text, payload jsonb)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT 1, 'generation.completed',
           jsonb_build_object('request_id', request_id, 'user_id', user_id, 'model', model,
               'provider', provider, 'prompt_tokens', prompt_tokens,
               'completion_tokens', completion_tokens, 'cost_usd', cost_usd, 'cached', cached)
    UNION ALL
    SELECT 2, 'usage.updated',
           jsonb_build_object('user_id', user_id, 'model', model,
               'day', (NOW() AT TIME ZONE 'UTC')::date, 'requests', 1,
               'cached_requests', CASE WHEN cached THEN 1 ELSE 0 END,
               'prompt_tokens', CASE WHEN cached THEN 0 ELSE prompt_tokens END,
               'completion_tokens', CASE WHEN cached THEN 0 ELSE completion_tokens END,
               'cost_usd', CASE WHEN cached THEN 0 ELSE cost_usd END)
$$;

-- A cancelled request's `generation.cancelled` payload.
CREATE FUNCTION hub_cancelled_payload(request_id uuid, user_id uuid, model text, reason text)
RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT jsonb_build_object('request_id', request_id, 'user_id', user_id, 'model', model,
                              'error_code', 'cancelled', 'error_message', reason)
$$;
