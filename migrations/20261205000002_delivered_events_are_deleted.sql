-- The relay deletes an event once the hub has it, instead of marking it delivered. Marking
-- was a non-HOT update (delivered_at is in the undelivered index's predicate) of every event,
-- two per job: a second copy of the row and a second primary key entry, about a tenth of the
-- WAL a job wrote. And the delivered events were kept forever: the table grew by two rows per
-- job with nothing reading them (the hub has them; receivers deduplicate by id).
--
-- Safe while the previous release runs: its relays still mark events delivered, and what they
-- mark after this ran is read by nothing (every reader asks for `delivered_at IS NULL`); the
-- statement below, run again once it is gone, removes those rows.
DELETE FROM outbox_events WHERE delivered_at IS NOT NULL;
