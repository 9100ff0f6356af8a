-- Batches: many requests submitted at once; each item is an ordinary request row with its
-- own job (at a lower priority), linked to its batch.
CREATE TABLE generation_batches (
    id UUID PRIMARY KEY,
    user_id UUID NOT NULL,
    item_count INTEGER NOT NULL CHECK (item_count > 0),
    metadata JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW()
);
CREATE INDEX generation_batches_user_idx ON generation_batches (user_id, created_at DESC);

ALTER TABLE generation_requests
    ADD COLUMN batch_id UUID REFERENCES generation_batches (id),
    ADD COLUMN batch_index INTEGER;
CREATE INDEX generation_requests_batch_idx ON generation_requests (batch_id, batch_index)
    WHERE batch_id IS NOT NULL;
