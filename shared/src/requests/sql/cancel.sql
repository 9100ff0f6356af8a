-- Cancels a pending or running request, of user $2 (NULL: an admin's, any owner), and queues
-- its `generation.cancelled` hub event in the same statement. Answers the owner when it was
-- cancelled here (no row: unknown, another user's, or already final).
--
-- Parameters:
--   $1 id uuid              $2 user_id uuid (NULL: any owner)
WITH cancelled AS (
    UPDATE generation_requests
    SET status = 'cancelled', completed_at = NOW(), updated_at = NOW(), error_code = 'cancelled',
        error_message = 'the request was cancelled', claimed_by = NULL, lease_expires_at = NULL
    WHERE id = $1 AND ($2::uuid IS NULL OR user_id = $2) AND status IN ('pending', 'running')
    RETURNING id, user_id, model, error_message
), events AS (
    INSERT INTO outbox_events (id, request_id, type, payload)
    SELECT gen_random_uuid(), id, 'generation.cancelled',
           hub_cancelled_payload(id, user_id, model, error_message)
    FROM cancelled
)
SELECT user_id FROM cancelled
