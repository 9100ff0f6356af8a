-- Every user's usage for admins (shared/src/usage/sql/all_users.sql) is read a page at a time in
-- (day, user_id, model) order from a day on. This index holds the rows in that order, so a
-- page reads its rows (and their shards) and stops, however many users and days the range
-- holds; without it each page read and sorted the whole range.
--
-- Its columns are the primary key's: the usage upsert never changes them, so its updates stay
-- HOT and only a new (user, day, model, shard) row adds an entry. Safe while the previous
-- release runs: it never reads this index.
CREATE INDEX usage_daily_by_day_idx ON usage_daily (day, user_id, model);
