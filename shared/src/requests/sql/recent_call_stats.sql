-- Per (provider, upstream model): the provider calls finished in the last `$1` seconds, their
-- failures and median latency, whether the latest `$2` calls all failed, and the last call.
--
-- Parameters:
--   $1 window float8    seconds
--   $2 streak int8      how many of the latest calls must all have failed
WITH recent AS (
    SELECT provider, model, outcome, latency_ms, finished_at,
           ROW_NUMBER() OVER (PARTITION BY provider, model ORDER BY finished_at DESC) AS nth
    FROM generation_attempts
    WHERE finished_at > NOW() - make_interval(secs => $1)
      AND outcome IN ('succeeded', 'failed') AND provider IS NOT NULL AND model IS NOT NULL
)
SELECT provider, model, COUNT(*) AS calls,
       COUNT(*) FILTER (WHERE outcome = 'failed') AS failures,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms)::float8 AS p50_latency_ms,
       (COUNT(*) FILTER (WHERE nth <= $2) >= $2
        AND BOOL_AND(outcome = 'failed') FILTER (WHERE nth <= $2)) AS latest_all_failed,
       MAX(finished_at) AS last_call_at
FROM recent GROUP BY provider, model
