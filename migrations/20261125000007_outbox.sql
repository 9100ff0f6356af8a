-- Events for the message hub, written in the same transaction as the state change they report
-- and delivered by the workers' relay, at least once, in order per request.
CREATE TABLE outbox_events (
    seq BIGSERIAL PRIMARY KEY,
    id UUID NOT NULL UNIQUE,
    request_id UUID,
    type VARCHAR(100) NOT NULL,
    payload JSONB NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    delivered_at TIMESTAMP WITH TIME ZONE,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    last_error TEXT
);
CREATE INDEX outbox_events_due_idx ON outbox_events (next_attempt_at, seq) WHERE delivered_at IS NULL;
CREATE INDEX outbox_events_request_idx ON outbox_events (request_id, seq) WHERE delivered_at IS NULL;
