-- Pauses the worker's fetching of jobs below a priority for a while (see the migration that
-- creates apalis.fetch_pauses). A pause already running longer is kept.
--
-- Parameters:
--   $1 worker text           the worker's name
--   $2 below_priority int4   jobs below this priority are not fetched
--   $3 secs float8           for this long
INSERT INTO apalis.fetch_pauses (worker, below_priority, until)
VALUES ($1, $2, NOW() + make_interval(secs => $3))
ON CONFLICT (worker) DO UPDATE
SET below_priority = EXCLUDED.below_priority,
    until = GREATEST(apalis.fetch_pauses.until, EXCLUDED.until)
