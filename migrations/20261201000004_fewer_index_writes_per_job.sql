-- Index entries written for every job that no query needs. A non-HOT update (every status
-- change: the status is indexed) adds an entry to each index whose predicate the new row
-- matches, so each index below cost one entry per submit, claim and completion. Safe while the
-- previous release runs: its queries read the same rows, through these indexes or the primary
-- key.

-- 1. Requests by status served the admin listing and replays, and held every request three
--    times over. Replays read only the failed and cancelled ones; pending and running ones are
--    found through generation_requests_unfinished_idx, and completed ones (nearly all rows) by
--    walking the primary key.
CREATE INDEX generation_requests_replayable_idx
    ON generation_requests (id DESC) WHERE status IN ('failed', 'cancelled');
DROP INDEX generation_requests_status_idx;

-- 2. An outbox event's id is what the hub deduplicates on, and it is a fresh
--    gen_random_uuid() for every event; nothing looks an event up by it. Its unique index was
--    a random insertion into a b-tree for each event written and again for each delivery.
ALTER TABLE outbox_events DROP CONSTRAINT outbox_events_id_key;

-- 3. The response cache by model served only the admin's invalidation, which also matches by
--    key prefix and template and reads the table through (a rare operation); every stored
--    result paid an entry for it. The purge of expired entries keeps its index.
DROP INDEX response_cache_model_idx;
