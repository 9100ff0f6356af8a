-- An OpenAI batch ends with its completion window (24 h): the requests it still has pending or
-- running then end cancelled with `error_code = 'batch_expired'` and the batch shows `expired`
-- (`openai_batches::expire_due`, run by every worker's rescuer). `expires_at` is when the
-- window ends (NULL for native batches), `expired_at` when requests were expired by it.
--
-- The expiry finds its batches through their unfinished requests (the age index of
-- unfinished requests: a batch's requests are as old as the batch), so a batch that finished
-- in time is never read again.
--
-- Safe while the previous release runs: it names neither column.
ALTER TABLE generation_batches
    ADD COLUMN expires_at TIMESTAMP WITH TIME ZONE,
    ADD COLUMN expired_at TIMESTAMP WITH TIME ZONE;
UPDATE generation_batches SET expires_at = created_at + INTERVAL '24 hours'
WHERE endpoint IS NOT NULL;
