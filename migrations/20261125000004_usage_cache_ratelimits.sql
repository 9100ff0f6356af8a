-- Usage and cost per user, per model, per day (written in the statement that completes a
-- request, so each request counts exactly once); per-user rate-limit overrides; and what the
-- cache and coalescing need on the request row.
--
-- A user's completions would all update the same usage row and queue on its lock: each
-- request adds to one of 16 shard rows (picked from its id), and reads sum the shards.
CREATE TABLE usage_daily (
    user_id UUID NOT NULL,
    day DATE NOT NULL,
    model VARCHAR(50) NOT NULL,
    shard SMALLINT NOT NULL DEFAULT 0 CHECK (shard BETWEEN 0 AND 15),
    requests BIGINT NOT NULL DEFAULT 0,
    cached_requests BIGINT NOT NULL DEFAULT 0,
    prompt_tokens BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, day, model, shard)
);

CREATE TABLE rate_limit_overrides (
    user_id UUID PRIMARY KEY,
    requests_per_minute INTEGER CHECK (requests_per_minute >= 0),
    tokens_per_minute INTEGER CHECK (tokens_per_minute >= 0),
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW()
);

ALTER TABLE generation_requests
    ADD COLUMN served_model VARCHAR(50),
    ADD COLUMN cost_usd DOUBLE PRECISION,
    ADD COLUMN cached BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN cache_key VARCHAR(255),
    ADD COLUMN cache_policy JSONB NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN estimated_tokens INTEGER,
    ADD COLUMN coalesced_into UUID;

CREATE INDEX generation_requests_inflight_cache_idx
    ON generation_requests (cache_key) WHERE status IN ('pending', 'running') AND coalesced_into IS NULL;
CREATE INDEX generation_requests_coalesced_idx
    ON generation_requests (coalesced_into) WHERE coalesced_into IS NOT NULL;
CREATE INDEX response_cache_model_idx ON response_cache (model);
