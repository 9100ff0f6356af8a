-- The tool calls a model answered with (`[{"id", "name", "arguments"}]`, `arguments` the JSON
-- text the model wrote), stored with the result; NULL when it called none. A cache entry keeps
-- them in its `metadata` (`tool_calls`), so a hit answers the same calls.
--
-- Safe while the previous release runs: a nullable column without a default (no rewrite), which
-- the previous release neither reads nor writes.
ALTER TABLE generation_requests ADD COLUMN tool_calls JSONB;
