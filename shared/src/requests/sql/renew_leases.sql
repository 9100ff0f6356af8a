-- Extends the leases of the requests a worker still holds (its liveness signal).
--
-- Parameters:
--   $1 ids uuid[]       the requests the worker is running
--   $2 worker text      the worker
--   $3 lease float8     the new lease from now, in seconds
WITH locked AS (
    -- in id order, as every batched statement on this table (LOCK_ORDER in claim_many.sql)
    SELECT r.id
    FROM generation_requests r
    -- found by id (see BY_ID_ONLY), joined rather than `id = ANY(…)`: on a near-empty table
    -- the planner took that as a condition on the status index's second column, a full scan
    JOIN unnest($1::uuid[]) AS wanted(id) ON r.id = wanted.id
    WHERE r.claimed_by = $2 AND CASE r.status WHEN 'running' THEN true ELSE false END
    ORDER BY r.id
    FOR UPDATE OF r
)
UPDATE generation_requests r
SET lease_expires_at = NOW() + make_interval(secs => $3)
FROM locked
WHERE r.id = locked.id AND r.claimed_by = $2
  AND CASE r.status WHEN 'running' THEN true ELSE false END
