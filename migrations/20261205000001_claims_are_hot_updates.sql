-- A claim (pending -> running) and a lease renewal changed an indexed column: the status and
-- the lease were in generation_requests_unfinished_idx, and the status in the predicates of
-- the in-flight cache and replayable indexes. PostgreSQL counts predicate columns as indexed,
-- so each claim and each renewal wrote a new row version elsewhere plus an entry in every
-- index of the table (four per claim). No index names a column that a claim or a renewal
-- writes now, so both are HOT updates (a new version on the same page, no index entry):
-- "unfinished" is `completed_at IS NULL`, and "failed or cancelled" is `error_code IS NOT
-- NULL` (a superset: a request waiting out a retry keeps its last error code). The two
-- CHECKs below make those equivalences hold for every write. The completion is still a
-- non-HOT update (it sets completed_at), as it must be to leave the partial indexes.
--
-- Safe while the previous release runs: its queries stay correct (they read the same rows);
-- until it is replaced, its status-filtered lookups read through the primary key instead.

-- Room on each page for a row's claimed version next to it (new pages only).
ALTER TABLE generation_requests SET (fillfactor = 75);

-- Rows an earlier release finished without a completion time or error code (none is
-- expected: every finishing write sets both) are made to satisfy the constraints.
UPDATE generation_requests SET completed_at = updated_at
WHERE completed_at IS NULL AND status NOT IN ('pending', 'running');
UPDATE generation_requests SET completed_at = NULL
WHERE completed_at IS NOT NULL AND status IN ('pending', 'running');
UPDATE generation_requests SET error_code = status
WHERE error_code IS NULL AND status IN ('failed', 'cancelled');

ALTER TABLE generation_requests
    ADD CONSTRAINT generation_requests_finished_when_completed_at
        CHECK ((completed_at IS NULL) = (status IN ('pending', 'running'))),
    ADD CONSTRAINT generation_requests_failures_have_an_error_code
        CHECK (status NOT IN ('failed', 'cancelled') OR error_code IS NOT NULL);

-- Unfinished requests (the rescuer's and the queue gauges' rows), oldest first.
CREATE INDEX generation_requests_unfinished_by_age_idx
    ON generation_requests (created_at) WHERE completed_at IS NULL;
DROP INDEX generation_requests_unfinished_idx;

-- The identical request in flight that a cache miss may follow, the oldest first. Keyed on
-- the age too: with the key alone, the planner took the age index above and walked the
-- unfinished requests oldest first until one matched the key, the whole backlog per submit.
CREATE INDEX generation_requests_inflight_by_key_idx
    ON generation_requests (cache_key, created_at)
    WHERE completed_at IS NULL AND coalesced_into IS NULL;
DROP INDEX generation_requests_inflight_cache_idx;

-- The replays' failed and cancelled requests.
CREATE INDEX generation_requests_errored_idx
    ON generation_requests (id DESC) WHERE error_code IS NOT NULL;
DROP INDEX generation_requests_replayable_idx;
