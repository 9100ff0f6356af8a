-- Moves dead letters back to the outbox: the ones named (`$1`, or every one when NULL), oldest
-- first, at most `$2`. Rows another replay holds are skipped. Each event keeps its id (the hub
-- deduplicates by it) and gets a new `seq`, so it goes after whatever of its request is still
-- waiting.
--
-- Parameters:
--   $1 ids uuid[]   the dead letters to replay; NULL: all
--   $2 limit int8   most rows moved
WITH chosen AS (
    SELECT seq FROM outbox_dead_letters
    WHERE $1::uuid[] IS NULL OR id = ANY($1::uuid[])
    ORDER BY seq
    LIMIT $2
    FOR UPDATE SKIP LOCKED
),
moved AS (
    DELETE FROM outbox_dead_letters d USING chosen c
    WHERE d.seq = c.seq
    RETURNING d.seq, d.id, d.request_id, d.type, d.payload, d.created_at
)
INSERT INTO outbox_events (id, request_id, type, payload, created_at)
SELECT id, request_id, type, payload, created_at FROM moved ORDER BY seq
RETURNING id
