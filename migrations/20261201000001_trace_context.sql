-- The trace id of the api request that submitted a generation (W3C trace-context form, 32 hex
-- digits), so the worker's job span carries the same id and its logs join the api's.
-- Nullable and unused by the previous release: safe to apply while it runs.
ALTER TABLE generation_requests ADD COLUMN trace_id VARCHAR(32);
