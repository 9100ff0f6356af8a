-- Ends a claimed request `failed`, if this worker's claim still holds it, closes the attempt
-- rows of this run still open (a run that failed before any provider answered, e.g. its model
-- is unknown here), and queues its `generation.failed` outbox event in the same statement.
--
-- Parameters:
--   $1 id uuid              $2 worker text          $3 run int (the claim's `attempts`)
--   $4 error_code text      $5 error_message text
WITH failed AS (
    UPDATE generation_requests
    SET status = 'failed', error_code = $4, error_message = $5, completed_at = NOW(),
        updated_at = NOW(), claimed_by = NULL, lease_expires_at = NULL
    WHERE id = $1 AND status = 'running' AND claimed_by = $2 AND attempts = $3
    RETURNING id, user_id, model
), closed AS (
    UPDATE generation_attempts
    SET outcome = 'failed', finished_at = NOW(), error_kind = $4, error_message = $5
    WHERE request_id = (SELECT id FROM failed) AND run = $3 AND outcome = 'running'
)
INSERT INTO outbox_events (id, request_id, type, payload)
SELECT gen_random_uuid(), id, 'generation.failed',
       jsonb_build_object('request_id', id, 'user_id', user_id, 'model', model,
                          'error_code', $4::text, 'error_message', $5::text)
FROM failed
