-- Indexes written on every completion that nothing reads. Safe while the previous release runs:
-- it reads neither.
-- outbox_events_request_idx served the hub relay's old "first undelivered event of each request"
-- query; the relay reads through outbox_events_undelivered_idx since 20261201000002.
DROP INDEX outbox_events_request_idx;
-- response_cache is read and written by cache_key alone. Its primary key was a random `id`,
-- one more insertion at a random place of a b-tree for every stored result; the cache key
-- (already unique and not null) is the primary key now, and `id` stays as a plain column.
ALTER TABLE response_cache
    DROP CONSTRAINT response_cache_pkey,
    DROP CONSTRAINT response_cache_cache_key_key,
    ADD CONSTRAINT response_cache_pkey PRIMARY KEY (cache_key);
