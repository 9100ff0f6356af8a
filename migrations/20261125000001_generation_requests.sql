-- Generation requests and their provider calls: the request's prompt, parameters, result,
-- timings, attempts and the worker's lease on it, and one row per provider call (attempt
-- history).

-- apalis' queue schema (migrated right after ours) stores job metadata as hstore.
CREATE EXTENSION IF NOT EXISTS hstore;

CREATE TABLE generation_requests (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    prompt TEXT NOT NULL,
    context JSONB NOT NULL DEFAULT '{}'::jsonb,
    model VARCHAR(50) NOT NULL,
    user_id UUID NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    completed_at TIMESTAMP WITH TIME ZONE,
    tokens_used INTEGER,
    status VARCHAR(50) NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
    error_message TEXT,
    metadata JSONB NOT NULL DEFAULT '{}'::jsonb,

    -- generation parameters as submitted (temperature, max_tokens, ...)
    parameters JSONB NOT NULL DEFAULT '{}'::jsonb,
    result TEXT,
    provider VARCHAR(50),
    provider_model VARCHAR(100),
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    finish_reason VARCHAR(50),
    error_code VARCHAR(50),
    -- the apalis job that executes this request (a ULID derived from the request id)
    job_id TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL DEFAULT 5 CHECK (max_attempts > 0),
    started_at TIMESTAMP WITH TIME ZONE,
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    idempotency_key VARCHAR(255),
    -- the worker holding the request while it runs, and until when its claim is valid
    claimed_by TEXT,
    lease_expires_at TIMESTAMP WITH TIME ZONE
);

CREATE INDEX generation_requests_user_created_idx
    ON generation_requests (user_id, created_at DESC);
CREATE UNIQUE INDEX generation_requests_idempotency_idx
    ON generation_requests (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX generation_requests_unfinished_idx
    ON generation_requests (status, lease_expires_at) WHERE status IN ('pending', 'running');

-- Long-polling clients (GET ...?wait=) are woken by this, whatever path finished the request.
CREATE FUNCTION notify_generation_finished() RETURNS TRIGGER AS $$
BEGIN
    PERFORM pg_notify('generation_finished', NEW.id::text);
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER generation_finished
    AFTER UPDATE OF status ON generation_requests
    FOR EACH ROW
    WHEN (NEW.status IN ('completed', 'failed', 'cancelled') AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION notify_generation_finished();

CREATE TABLE generation_attempts (
    request_id UUID NOT NULL REFERENCES generation_requests (id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    worker TEXT NOT NULL,
    provider VARCHAR(50),
    model VARCHAR(100),
    started_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    finished_at TIMESTAMP WITH TIME ZONE,
    latency_ms INTEGER,
    outcome VARCHAR(20) NOT NULL DEFAULT 'running'
        CHECK (outcome IN ('running', 'succeeded', 'failed', 'abandoned')),
    error_kind VARCHAR(50),
    http_status INTEGER,
    error_message TEXT,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    PRIMARY KEY (request_id, attempt)
);

CREATE TABLE response_cache (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    cache_key VARCHAR(255) NOT NULL UNIQUE,
    response TEXT NOT NULL,
    prompt TEXT NOT NULL,
    model VARCHAR(50) NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    expires_at TIMESTAMP WITH TIME ZONE,
    metadata JSONB DEFAULT '{}'::jsonb
);

CREATE INDEX response_cache_expires_idx ON response_cache (expires_at);
