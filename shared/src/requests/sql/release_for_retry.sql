-- Hands a claimed request back to the queue (`pending`, resuming at `fallback_index` of its
-- chain), if this worker's claim still holds it. A run that called no provider was no attempt:
-- its unused attempt row is deleted and the run is not counted. Its job is rescheduled by the
-- caller, in the same transaction.
--
-- Parameters:
--   $1 id uuid              $2 worker text          $3 run int (the claim's `attempts`)
--   $4 fallback_index int   $5 error_code text      $6 error_message text
WITH unused AS (
    DELETE FROM generation_attempts
    WHERE request_id = $1 AND run = $3 AND worker = $2 AND outcome = 'running'
      AND provider IS NULL
    RETURNING 1
)
UPDATE generation_requests
SET status = 'pending', claimed_by = NULL, lease_expires_at = NULL, fallback_index = $4,
    error_code = $5, error_message = $6, updated_at = NOW(),
    attempts = attempts - (SELECT COUNT(*) FROM unused)::int
WHERE id = $1 AND status = 'running' AND claimed_by = $2 AND attempts = $3
