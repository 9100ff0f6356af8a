-- Model health (`GET /api/v1/models`) reads each (provider, upstream model)'s latest finished
-- calls (requests/sql/recent_call_stats.sql): newest first, within the health window, at most
-- a fixed number per model. Without an index it read the whole attempt history on every
-- call, however old. This index serves both steps of that statement: skipping from one
-- (provider, model) to the next, and each one's calls newest first. Only finished calls are
-- in it: an attempt row enters it once, when its call ends (a running attempt costs nothing).
--
-- Safe while the previous release runs: its statement reads the same rows, through any plan.
CREATE INDEX generation_attempts_recent_calls_idx
    ON generation_attempts (provider, model, finished_at)
    WHERE outcome IN ('succeeded', 'failed');
