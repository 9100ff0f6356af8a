-- The virtual time of a fair-share class (its apalis priority): the earliest virtual time of
-- the class's new jobs still waiting (the head of its queue, read through apalis' fetch index),
-- or, when none waits, the latest virtual time any user of the class reached (so a user idle
-- for a while starts level with the others, not with credit). Virtual times are the `run_at`
-- of new jobs: from 1970 to 2000. Jobs due at real times (a rescheduled, rescued or replayed
-- job) and jobs run before (attempts > 0) do not count.
--
-- PL/pgSQL, not SQL: a session plans its query once and keeps the plan, where a SQL function
-- called from a statement is planned again at every execution of that statement (~0.5 ms).
CREATE FUNCTION fair_share_clock(v_class INTEGER) RETURNS TIMESTAMPTZ
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN COALESCE(
        (SELECT run_at FROM apalis.jobs
         WHERE job_type = 'llm::generation'
           AND (status = 'Pending' OR (status = 'Failed' AND attempts < max_attempts))
           AND priority = v_class AND attempts = 0
           AND run_at < TIMESTAMPTZ '2000-01-01 00:00:00+00'
         ORDER BY priority DESC, run_at ASC
         LIMIT 1),
        (SELECT max(finish_at) FROM fair_share WHERE class = v_class),
        TIMESTAMPTZ '1970-01-01 00:00:00+00');
END
$$;
