-- Since delivered events are deleted (20261205000002), every row of outbox_events is an
-- undelivered one, so the partial index on (seq) WHERE delivered_at IS NULL held exactly what
-- the primary key holds: a second b-tree entry for every event written, two per job, that
-- nothing needed. The relay's window (`delivered_at IS NULL AND seq > $1 ORDER BY seq`) reads
-- the primary key in the same order.
--
-- Safe while the previous release runs: its relay reads the same rows through the primary
-- key, and the rows it still marks delivered instead of deleting are skipped by its filter
-- (and removed by 20261205000002's statement, run again once it is gone).
DROP INDEX outbox_events_undelivered_idx;
