-- OpenAI's Batch API (`/v1/files`, `/v1/batches`): a JSONL file uploaded with purpose `batch`,
-- and a batch made from it. The batch is one of our `generation_batches` (its lines are its
-- requests, each with its own job at batch priority); these columns are what OpenAI's batch
-- object shows beyond ours. A line's `custom_id` is kept in its request's metadata
-- (`batch_custom_id`, a key only the service writes). Output and error files are not stored:
-- they are read back from the requests' rows.
--
-- `content` is the uploaded text itself, bounded (8 MiB, the size of a native batch body):
-- a file is read whole once, when a batch is made from it.
CREATE TABLE openai_files (
    id UUID PRIMARY KEY,
    user_id UUID NOT NULL,
    purpose TEXT NOT NULL,
    filename TEXT NOT NULL,
    bytes INTEGER NOT NULL CHECK (bytes >= 0 AND bytes <= 8388608),
    content TEXT NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW()
);
-- A user's files, newest first (ids are UUIDv7: their order is their creation's).
CREATE INDEX openai_files_user_idx ON openai_files (user_id, id);

-- NULL for a native batch. Safe while the previous release runs: it names none of them.
ALTER TABLE generation_batches
    ADD COLUMN input_file_id UUID,
    ADD COLUMN endpoint TEXT,
    ADD COLUMN completion_window TEXT,
    ADD COLUMN cancelled_at TIMESTAMP WITH TIME ZONE;
-- A user's OpenAI batches, newest first.
CREATE INDEX generation_batches_openai_user_idx ON generation_batches (user_id, id)
    WHERE endpoint IS NOT NULL;
