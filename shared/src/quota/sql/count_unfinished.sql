-- A user's unfinished requests (pending or running: `completed_at IS NULL`, see the CHECK of
-- migration 20261205000001), counted up to $2 at most: the submit path asks only whether the
-- quota is reached, so a user holding a large backlog costs at most $2 index entries.
-- Reads generation_requests_unfinished_by_user_idx (migration 20261212000003).
--   $1 user_id uuid    $2 the quota (bigint)
SELECT COUNT(*) FROM (
    SELECT 1 FROM generation_requests
    WHERE user_id = $1 AND completed_at IS NULL
    LIMIT $2
) unfinished
