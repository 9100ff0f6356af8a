-- Claims a batch of requests for a worker: `pending` ones, and `running` ones whose lease ran
-- out (their worker died). Each claim is a new run (`attempts` + 1) holding a lease; a run
-- within `max_attempts` also opens the attempt row of its first provider call. Answers the
-- claimed rows (`ClaimedRequest`), `first_attempt` 0 for a run past `max_attempts`.
--
-- Parameters:
--   $1 ids uuid[]       the requests, each once
--   $2 worker text      the claiming worker
--   $3 lease float8     the lease, in seconds
WITH locked AS (
    -- LOCK_ORDER: the rows are locked in id order before they are updated, as every batched
    -- statement on this table locks them, so two batches sharing rows queue behind each other
    -- instead of each holding a row the other waits for (a deadlock).
    SELECT r.id
    FROM generation_requests r
    JOIN unnest($1::uuid[]) AS wanted(id) ON r.id = wanted.id
    -- found by id (see BY_ID_ONLY): pending, or running on a lease that ran out
    WHERE CASE r.status WHEN 'pending' THEN true
                        WHEN 'running' THEN r.lease_expires_at < NOW()
                        ELSE false END
    ORDER BY r.id
    FOR UPDATE OF r
), claimed AS (
    UPDATE generation_requests r
    SET status = 'running', attempts = r.attempts + 1,
        started_at = COALESCE(r.started_at, NOW()), updated_at = NOW(), claimed_by = $2,
        lease_expires_at = NOW() + make_interval(secs => $3)
    FROM locked
    WHERE r.id = locked.id
      AND CASE r.status WHEN 'pending' THEN true
                        WHEN 'running' THEN r.lease_expires_at < NOW()
                        ELSE false END
    RETURNING r.id, r.attempts, r.max_attempts, r.prompt, r.model, r.parameters, r.context,
              r.metadata, r.fallback_index, r.stream, r.cache_key, r.cache_policy,
              r.user_id, r.estimated_tokens, r.created_at, r.trace_id, r.replays, r.batch_id
), opened AS (
    INSERT INTO generation_attempts (request_id, attempt, run, worker)
    SELECT c.id,
           (SELECT COALESCE(MAX(a.attempt), 0) + 1 FROM generation_attempts a
            WHERE a.request_id = c.id),
           c.attempts, $2
    FROM claimed c WHERE c.attempts <= c.max_attempts
    RETURNING request_id, attempt
)
SELECT claimed.*, COALESCE(opened.attempt, 0) AS first_attempt
FROM claimed LEFT JOIN opened ON opened.request_id = claimed.id
