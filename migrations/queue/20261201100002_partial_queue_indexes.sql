-- apalis indexes two columns that are NULL for nearly every job, and each insert and status
-- change of a job added a NULL entry to both. Both become partial over the non-NULL values;
-- what apalis' queries ask of them is unchanged.
--
-- 1. idx_jobs_idempotency_key enforces one job per (job_type, idempotency_key). NULL keys are
--    distinct in a unique index, so the partial one enforces exactly the same rule. This
--    service enqueues without a key (the request id already is the job's identity).
DROP INDEX apalis.idx_jobs_idempotency_key;
CREATE UNIQUE INDEX idx_jobs_idempotency_key ON apalis.jobs (job_type, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- 2. idx_apalis_jobs_lock_by is read by `lock_by = <worker>` (acknowledgements, heartbeats,
--    re-enqueueing a lost worker's jobs): an equality that implies the predicate. Since
--    20261201100001 only the jobs being run have a worker.
DROP INDEX apalis.idx_apalis_jobs_lock_by;
CREATE INDEX idx_apalis_jobs_lock_by ON apalis.jobs (lock_by) WHERE lock_by IS NOT NULL;
