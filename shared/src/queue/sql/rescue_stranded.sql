-- Re-queues the jobs of unfinished requests that nothing will run any more: the request is
-- `pending`, or `running` with an expired lease, unchanged for the grace period, while its job
-- is finished or out of attempts. Jobs another worker is re-queuing are skipped. A rescued job
-- goes ahead of its class's new jobs (`queue::returning`).
--
-- Parameters:
--   $1 grace float8     seconds a request must have been left alone
WITH stranded AS (
    SELECT j.id
    FROM generation_requests r
    JOIN apalis.jobs j ON j.id = r.job_id
    -- `completed_at IS NULL`: the unfinished ones, through their partial index
    WHERE r.completed_at IS NULL
      AND (r.status = 'pending' OR (r.status = 'running' AND r.lease_expires_at < NOW()))
      AND r.updated_at < NOW() - make_interval(secs => $1)
      AND (j.status IN ('Done', 'Killed')
           OR (j.status = 'Failed' AND j.attempts >= j.max_attempts))
    FOR UPDATE OF j SKIP LOCKED
)
UPDATE apalis.jobs j
SET status = 'Pending', run_at = NOW(), priority = j.priority | 1, lock_by = NULL, lock_at = NULL, done_at = NULL,
    attempts = LEAST(j.attempts, j.max_attempts - 1)
FROM stranded WHERE j.id = stranded.id
