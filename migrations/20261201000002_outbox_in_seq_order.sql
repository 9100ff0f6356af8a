-- The hub relay reads the backlog in `seq` order, a window at a time (shared/src/hub.rs): this
-- index holds only the undelivered events, so a window costs what it returns. It replaces the
-- index on (next_attempt_at, seq), which nothing reads any more. Safe while the previous release
-- runs: its relay reads the same rows, only through another plan.
CREATE INDEX outbox_events_undelivered_idx ON outbox_events (seq) WHERE delivered_at IS NULL;
DROP INDEX outbox_events_due_idx;
