-- Registers a worker in apalis' table of workers, as apalis-postgres' own registration does
-- (`queries/worker/register.sql`), seen now. A name held by a live process (its session holds
-- the advisory lock on it) is not taken: no row, and the worker is refused.
--
-- Parameters:
--   $1 id text          the worker's name
--   $2 worker_type text the queue
--   $3 storage_name text
--   $4 layers text      the worker's service
INSERT INTO apalis.workers (id, worker_type, storage_name, layers, last_seen)
VALUES ($1, $2, $3, $4, NOW())
ON CONFLICT (id) DO UPDATE
SET worker_type = EXCLUDED.worker_type,
    storage_name = EXCLUDED.storage_name,
    layers = EXCLUDED.layers,
    last_seen = NOW()
WHERE pg_try_advisory_lock(hashtext(workers.id))
