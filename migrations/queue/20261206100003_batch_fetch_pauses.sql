-- A worker whose batch items are being sent back to the queue for want of provider budget
-- pauses fetching new batch jobs for a while: fetching one only to send it back costs the
-- database a claim and a release, and with a backlog of thousands a worker with free slots
-- would do nothing else. Interactive jobs, and batch jobs coming back at the time promised to
-- them (the returning priority, `priority | 1`), are still fetched. A pause is a row here,
-- keyed by the worker's name (a restarted worker fetches as `<name>-r<n>`).
CREATE TABLE apalis.fetch_pauses (
    worker TEXT PRIMARY KEY,
    -- jobs below this priority are not fetched until `until`
    below_priority INTEGER NOT NULL,
    until TIMESTAMPTZ NOT NULL
);

-- apalis' own fetch (its migration 20260902075949), with the pause of the fetching worker.
CREATE OR REPLACE FUNCTION apalis.get_jobs(
    worker_id TEXT,
    v_job_type TEXT,
    v_job_count INTEGER DEFAULT 5
)
RETURNS SETOF apalis.jobs
LANGUAGE sql
VOLATILE
AS $$
    WITH jobs AS (
        SELECT id
        FROM apalis.jobs
        WHERE
            (
                status = 'Pending'
                OR (
                    status = 'Failed'
                    AND attempts < max_attempts
                )
            )
            AND run_at < now()
            AND job_type = v_job_type
            AND priority >= COALESCE(
                (SELECT max(p.below_priority) FROM apalis.fetch_pauses p
                 WHERE (p.worker = worker_id OR starts_with(worker_id, p.worker || '-r'))
                   AND p.until > now()),
                0)
        ORDER BY priority DESC, run_at ASC
        LIMIT v_job_count
        FOR UPDATE SKIP LOCKED
    )
    UPDATE apalis.jobs j
    SET
        status = 'Queued',
        lock_by = worker_id,
        lock_at = now()
    FROM jobs
    WHERE j.id = jobs.id
    RETURNING j.*;
$$;
