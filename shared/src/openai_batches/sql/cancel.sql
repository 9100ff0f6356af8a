-- Cancels an OpenAI batch of user $2: the batch keeps when it was first cancelled, and each
-- of its requests still pending or running ends cancelled (a pending one never runs; a running
-- one's worker hears of it through the completion notice, as for a single cancel), each with
-- its `generation.cancelled` hub event.
WITH batch AS (
    UPDATE generation_batches
    SET cancelled_at = COALESCE(cancelled_at, NOW())
    WHERE id = $1 AND user_id = $2 AND endpoint IS NOT NULL
    RETURNING id
), cancelled AS (
    UPDATE generation_requests
    SET status = 'cancelled', completed_at = NOW(), updated_at = NOW(), error_code = 'cancelled',
        error_message = 'the batch was cancelled', claimed_by = NULL, lease_expires_at = NULL
    WHERE batch_id IN (SELECT id FROM batch) AND status IN ('pending', 'running')
    RETURNING id, user_id, model, error_message
)
-- each request's `generation.cancelled` for the hub, in this statement's transaction
INSERT INTO outbox_events (id, request_id, type, payload)
SELECT gen_random_uuid(), id, 'generation.cancelled',
       hub_cancelled_payload(id, user_id, model, error_message)
FROM cancelled
