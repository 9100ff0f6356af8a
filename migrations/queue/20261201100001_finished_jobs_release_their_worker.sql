-- Migrations of apalis' schema, run after apalis' own (db::migrate; table
-- _sqlx_queue_migrations). They tune the tables apalis writes; its queries stay unchanged.

-- 1. apalis acknowledges a batch of results with `WHERE jobs.lock_by = <worker>` and no status
--    (queries/task/handle_result.sql), and a finished job used to keep its `lock_by`. A worker
--    name is new to the statistics, so the planner read the rows through the lock_by index:
--    every acknowledgement walked every job that worker had ever finished (about 2 ms per call
--    at 10,000 jobs, growing with the jobs retained). A job that leaves Queued/Running now lets
--    go of its worker, so that index holds only the jobs being run. Nothing reads the worker of
--    a finished job (attempts record who ran what); a late second acknowledgement of a finished
--    job now matches nothing, as it should.
CREATE FUNCTION apalis.release_finished_job() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.lock_by := NULL;
    RETURN NEW;
END
$$;

CREATE TRIGGER finished_job_releases_worker
BEFORE UPDATE OF status ON apalis.jobs
FOR EACH ROW
WHEN (NEW.status NOT IN ('Queued', 'Running') AND NEW.lock_by IS NOT NULL)
EXECUTE FUNCTION apalis.release_finished_job();

UPDATE apalis.jobs SET lock_by = NULL
WHERE status NOT IN ('Queued', 'Running') AND lock_by IS NOT NULL;

-- 2. apalis' history leaves two duplicate indexes on apalis.jobs: `unique_job_id` repeats the
--    primary key and `lidx` repeats idx_apalis_jobs_lock_by. Every insert of a job (each
--    submit) and every change of its status kept both twice over.
DROP INDEX IF EXISTS apalis.unique_job_id;
DROP INDEX IF EXISTS apalis.lidx;
