-- apalis announces new jobs with a row trigger: one `apalis::job::insert` notification per job,
-- each with a JSON payload. Every listening worker's backend reads and sends each of them, and
-- the worker parses each, only to be woken (the wake strategy, shared/src/queue.rs, ignores
-- what it names). The api writes its jobs in batches, so one notification per statement
-- wakes the same workers: the first due job of each queue the statement filled, in the same
-- payload format (apalis' listener parses it, and so does the previous release's).
--
-- Safe while the previous release runs: its workers listen on the same channel and are woken
-- by the same payloads.
CREATE FUNCTION apalis.notify_new_jobs_once() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    due RECORD;
BEGIN
    FOR due IN
        SELECT DISTINCT ON (job_type) job_type, id, run_at
        FROM inserted
        WHERE run_at <= now()
        ORDER BY job_type, run_at
    LOOP
        PERFORM pg_notify(
            'apalis::job::insert',
            json_build_object('job_type', due.job_type, 'id', due.id, 'run_at', due.run_at)::text
        );
    END LOOP;
    RETURN NULL;
END
$$;

DROP TRIGGER notify_workers ON apalis.jobs;
CREATE TRIGGER notify_workers
AFTER INSERT ON apalis.jobs
REFERENCING NEW TABLE AS inserted
FOR EACH STATEMENT EXECUTE FUNCTION apalis.notify_new_jobs_once();
