-- Events received from the message hub, by id: a redelivered event has no effect twice.
CREATE TABLE inbox_events (
    id UUID PRIMARY KEY,
    type VARCHAR(100) NOT NULL,
    received_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW()
);
