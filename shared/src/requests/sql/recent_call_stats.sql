-- Per (provider, upstream model): its latest provider calls finished in the last `$1` seconds,
-- at most `$3` of them, with their failures and median latency, whether the latest `$2` all
-- failed, and the last call.
--
-- Bounded whatever the history holds: the models are found by skipping through
-- `generation_attempts_recent_calls_idx` from one (provider, model) to the next (one probe
-- each), and each model's calls are read from the same index newest first, stopping at the
-- window's start or after `$3` calls.
--
-- Parameters:
--   $1 window float8    seconds
--   $2 streak int8      how many of the latest calls must all have failed
--   $3 per_model int8   most calls read per model
WITH RECURSIVE pairs AS (
    (SELECT provider, model FROM generation_attempts
     WHERE outcome IN ('succeeded', 'failed') AND provider IS NOT NULL AND model IS NOT NULL
     ORDER BY provider, model LIMIT 1)
    UNION ALL
    SELECT next.provider, next.model
    FROM pairs p CROSS JOIN LATERAL (
        SELECT a.provider, a.model FROM generation_attempts a
        WHERE a.outcome IN ('succeeded', 'failed') AND a.provider IS NOT NULL
          AND a.model IS NOT NULL AND (a.provider, a.model) > (p.provider, p.model)
        ORDER BY a.provider, a.model LIMIT 1
    ) next
),
recent AS (
    SELECT p.provider, p.model, c.outcome, c.latency_ms, c.finished_at, c.nth
    FROM pairs p CROSS JOIN LATERAL (
        SELECT a.outcome, a.latency_ms, a.finished_at,
               ROW_NUMBER() OVER (ORDER BY a.finished_at DESC) AS nth
        FROM generation_attempts a
        WHERE a.provider = p.provider AND a.model = p.model
          AND a.outcome IN ('succeeded', 'failed')
          AND a.finished_at > NOW() - make_interval(secs => $1)
        ORDER BY a.finished_at DESC LIMIT $3
    ) c
)
SELECT provider, model, COUNT(*) AS calls,
       COUNT(*) FILTER (WHERE outcome = 'failed') AS failures,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms)::float8 AS p50_latency_ms,
       (COUNT(*) FILTER (WHERE nth <= $2) >= $2
        AND BOOL_AND(outcome = 'failed') FILTER (WHERE nth <= $2)) AS latest_all_failed,
       MAX(finished_at) AS last_call_at
FROM recent GROUP BY provider, model
