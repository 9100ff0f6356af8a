-- Hub events the hub kept refusing: after OUTBOX_MAX_ATTEMPTS tries the delivery loop moves an
-- event here (in the transaction that records its last failure), so the later events of its
-- request are no longer held behind it. Admins list them and replay them
-- (`/api/v1/admin/outbox/dead`), which moves them back to `outbox_events` under their own id.
--
-- A table of its own rather than a state column: every row of `outbox_events` stays an event
-- to deliver, read through its primary key (20261206000001), and dead letters cost the
-- delivery loop nothing. Safe while the previous release runs: nothing of it reads this table,
-- and its relay keeps retrying as it did.
CREATE TABLE outbox_dead_letters (
    seq BIGINT PRIMARY KEY,
    id UUID NOT NULL UNIQUE,
    request_id UUID,
    type VARCHAR(100) NOT NULL,
    payload JSONB NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    attempts INTEGER NOT NULL,
    last_error TEXT,
    dead_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW()
);
