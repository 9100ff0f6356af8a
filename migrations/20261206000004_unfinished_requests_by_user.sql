-- The per-user queued-work quota (USER_MAX_QUEUED) counts a user's unfinished requests on
-- every submit (shared/src/quota/sql/count_unfinished.sql). This index holds only unfinished
-- rows, by user: the count reads that user's backlog and nothing else. It names no column a
-- claim or a lease renewal writes (user_id, completed_at), so those stay HOT updates; a
-- completion leaves it, as it leaves the other partial indexes of unfinished rows.
--
-- Safe while the previous release runs: it never reads this index.
CREATE INDEX generation_requests_unfinished_by_user_idx
    ON generation_requests (user_id) WHERE completed_at IS NULL;
