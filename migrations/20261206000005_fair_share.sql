-- Fair share within each priority class of the queue: each user's place in a class is kept as
-- a virtual finish time, so a user's backlog delays another user's new request by about one
-- call, never by the backlog's length (shared/src/queue.rs, "Fair share").
--
-- `class` is the apalis priority of the class's new jobs (10 interactive, 0 batch);
-- `finish_at` the virtual start time of the user's latest job in that class. Virtual times are
-- timestamps from 1970 (apalis decodes no earlier time) to 2000, which is how a job carries its
-- own in apalis' `run_at`: the workers' fetch orders a class by `run_at`, and such a job is
-- always due.
CREATE TABLE fair_share (
    user_id UUID NOT NULL,
    class INTEGER NOT NULL,
    finish_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, class)
);
-- The class's latest virtual time, read when its queue has drained.
CREATE INDEX fair_share_class_finish_idx ON fair_share (class, finish_at);

-- A user's share of the workers relative to others (absent: 1).
ALTER TABLE rate_limit_overrides
    ADD COLUMN weight INTEGER CHECK (weight BETWEEN 1 AND 100);
