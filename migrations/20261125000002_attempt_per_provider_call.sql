-- One attempt row per provider call (a run of a request may call several providers along its
-- fallback chain); `run` says which claim of the request made the call. `fallback_index` is
-- where in its model's fallback chain a rescheduled request resumes.
ALTER TABLE generation_attempts ADD COLUMN run INTEGER;
UPDATE generation_attempts SET run = attempt WHERE run IS NULL;
ALTER TABLE generation_requests ADD COLUMN fallback_index INTEGER NOT NULL DEFAULT 0;
