-- Expires up to $2 OpenAI batches whose completion window has ended with requests still
-- pending or running: each such request ends cancelled with `error_code = 'batch_expired'`
-- (a running one's worker hears of it through the completion notice, as for a cancel), with
-- its `generation.cancelled` hub event, and the batch records when (`expired_at`). Requests
-- that finished in time are left as they are; so is a batch with none left to expire.
-- $1 is the shortest completion window in seconds: a batch's requests are as old as the
-- batch, so only requests unfinished for longer can belong to one whose window has ended (read
-- through generation_requests_unfinished_by_age_idx); an OpenAI batch stored without
-- `expires_at` has that window. Answers the batches and the requests expired.
WITH overdue AS MATERIALIZED (
    -- read first, and alone: the batches are then found by id (a plan that read the batches
    -- whose window ended would read every batch ever made, and each one's requests)
    SELECT DISTINCT r.batch_id AS id
    FROM generation_requests r
    WHERE r.completed_at IS NULL AND r.created_at <= NOW() - make_interval(secs => $1)
      AND r.batch_id IS NOT NULL
), due AS (
    SELECT b.id
    FROM overdue JOIN generation_batches b ON b.id = overdue.id
    CROSS JOIN LATERAL (
        SELECT COALESCE(b.expires_at, b.created_at + make_interval(secs => $1)) AS at
    ) expiry
    WHERE b.endpoint IS NOT NULL AND expiry.at <= NOW()
    ORDER BY expiry.at
    LIMIT $2
    FOR UPDATE OF b SKIP LOCKED
), locked AS (
    -- in id order, as every batched statement on this table (LOCK_ORDER in claim_many.sql)
    SELECT r.id
    FROM generation_requests r
    WHERE r.batch_id IN (SELECT id FROM due) AND r.status IN ('pending', 'running')
    ORDER BY r.id
    FOR UPDATE OF r
), expired AS (
    UPDATE generation_requests r
    SET status = 'cancelled', completed_at = NOW(), updated_at = NOW(),
        error_code = 'batch_expired',
        error_message = 'the batch''s completion window ended before this request finished',
        claimed_by = NULL, lease_expires_at = NULL
    FROM locked
    WHERE r.id = locked.id AND r.status IN ('pending', 'running')
    RETURNING r.id, r.user_id, r.model, r.error_code, r.error_message, r.batch_id
), marked AS (
    UPDATE generation_batches
    SET expired_at = NOW()
    WHERE id IN (SELECT batch_id FROM expired)
), events AS (
    -- each request's `generation.cancelled` for the hub, in this statement's transaction,
    -- with the request's own error code
    INSERT INTO outbox_events (id, request_id, type, payload)
    SELECT gen_random_uuid(), id, 'generation.cancelled',
           hub_cancelled_payload(id, user_id, model, error_message)
               || jsonb_build_object('error_code', error_code)
    FROM expired
)
SELECT COUNT(DISTINCT batch_id) AS batches, COUNT(*) AS requests FROM expired
