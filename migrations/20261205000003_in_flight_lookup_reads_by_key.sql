-- A submit that missed the cache looks for the identical request in flight, oldest first
-- (requests::insert_many). Both the in-flight index and the unfinished requests' age index
-- could answer it, since the lookup's `completed_at IS NULL` implied both predicates, and
-- which one a plan took depended on the statistics: on a table no ANALYZE had read yet,
-- holding a few hundred rows, the planner priced the two alike and took the age index, and a
-- writer connection kept that generic plan as the backlog grew (every submit walked every
-- unfinished request; the benchmark's submits ran at half speed in about half its runs).
--
-- The in-flight index now names its rows as `(completed_at IS NULL) IS TRUE`, the same rows,
-- and the lookup says exactly that: it implies this index's predicate and not the age index's
-- (PostgreSQL does not prove `x IS NULL` from `(x IS NULL) IS TRUE`), so the age index cannot
-- serve the lookup whatever the statistics say. Claims still write none of its columns (HOT).
--
-- Safe while the previous release runs: its lookup (`completed_at IS NULL`) reads through
-- the age index until it is replaced, as it could before.

CREATE INDEX generation_requests_inflight_by_key_new_idx
    ON generation_requests (cache_key, created_at)
    WHERE (completed_at IS NULL) IS TRUE AND coalesced_into IS NULL;
DROP INDEX generation_requests_inflight_by_key_idx;
ALTER INDEX generation_requests_inflight_by_key_new_idx
    RENAME TO generation_requests_inflight_by_key_idx;
