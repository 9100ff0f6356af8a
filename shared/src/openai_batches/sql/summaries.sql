-- OpenAI batches of one user with their requests counted by status: the batch $2 if given,
-- else newest first after the batch $3; at most $4. Each count reads the batch's own requests
-- through generation_requests_batch_idx.
SELECT b.id, b.created_at, b.metadata, b.item_count, b.input_file_id, b.endpoint,
       b.completion_window, b.cancelled_at, b.expires_at, b.expired_at, c.unfinished,
       c.completed, c.failed, c.cancelled,
       c.finished_at
FROM generation_batches b
CROSS JOIN LATERAL (
    SELECT COUNT(*) FILTER (WHERE r.status IN ('pending', 'running')) AS unfinished,
           COUNT(*) FILTER (WHERE r.status = 'completed') AS completed,
           COUNT(*) FILTER (WHERE r.status = 'failed') AS failed,
           COUNT(*) FILTER (WHERE r.status = 'cancelled') AS cancelled,
           MAX(r.completed_at) AS finished_at
    FROM generation_requests r
    WHERE r.batch_id = b.id
) c
WHERE b.user_id = $1
  AND b.endpoint IS NOT NULL
  AND ($2::uuid IS NULL OR b.id = $2)
  AND ($3::uuid IS NULL OR b.id < $3)
ORDER BY b.id DESC
LIMIT $4
