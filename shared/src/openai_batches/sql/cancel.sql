-- Cancels an OpenAI batch of user $2: the batch keeps when it was first cancelled, and each
-- of its requests still pending or running ends cancelled (a pending one never runs; a running
-- one's worker hears of it through the completion notice, as for a single cancel).
WITH batch AS (
    UPDATE generation_batches
    SET cancelled_at = COALESCE(cancelled_at, NOW())
    WHERE id = $1 AND user_id = $2 AND endpoint IS NOT NULL
    RETURNING id
)
UPDATE generation_requests
SET status = 'cancelled', completed_at = NOW(), updated_at = NOW(), error_code = 'cancelled',
    error_message = 'the batch was cancelled', claimed_by = NULL, lease_expires_at = NULL
WHERE batch_id IN (SELECT id FROM batch) AND status IN ('pending', 'running')
