-- Admin replays: how many times a failed or cancelled request was sent back to the queue.
ALTER TABLE generation_requests ADD COLUMN replays INTEGER NOT NULL DEFAULT 0;
CREATE INDEX generation_requests_status_idx ON generation_requests (status, id DESC);
