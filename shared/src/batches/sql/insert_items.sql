-- Stores the requests of a batch, pending, in their order in the batch (`batch_index` from 0),
-- with their jobs in the batch class, placed by fair share (see `requests/sql/insert_many.sql`
-- and `queue.rs`): the batch's n items take the next n virtual times of its user's share, in
-- the batch's order, so another user's batch interleaves with it instead of waiting for it.
--
-- Parameters, one array per column, one element per item:
--   $1 id uuid[]            $2 prompt text[]          $3 context jsonb[]
--   $4 model text[]         $5 metadata jsonb[]       $6 parameters jsonb[]
--   $7 job_id text[]        $8 max_attempts int4[]    $9 cache_key text[]
--   $10 cache_policy jsonb[] $11 estimated_tokens int4[]
--   $15 job bytea[]         the job's arguments, as apalis' JSON codec decodes them
--   $16 job_max_attempts int4[]
-- and, the same for every item:
--   $12 user_id uuid        $13 batch_id uuid         $14 trace_id text
--   $17 class int4          the apalis priority of the batch class
WITH items AS (
    SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::jsonb[], $4::text[], $5::jsonb[],
                         $6::jsonb[], $7::text[], $8::int4[], $9::text[], $10::jsonb[],
                         $11::int4[], $15::bytea[], $16::int4[])
        WITH ORDINALITY
        AS t(id, prompt, context, model, metadata, parameters, job_id, max_attempts,
             cache_key, cache_policy, estimated_tokens, job, job_max_attempts, ord)
), inserted AS (
    INSERT INTO generation_requests
        (id, prompt, context, model, user_id, metadata, parameters, job_id, max_attempts,
         cache_key, cache_policy, estimated_tokens, batch_id, batch_index, trace_id)
    SELECT t.id, t.prompt, t.context, t.model, $12, t.metadata, t.parameters, t.job_id,
           t.max_attempts, t.cache_key, t.cache_policy, t.estimated_tokens, $13, t.ord - 1,
           $14
    FROM items t
), demand AS (
    SELECT COUNT(*) AS n, fair_share_clock($17) AS clock,
           (SELECT make_interval(secs => 0.001 / COALESCE(
                (SELECT weight FROM rate_limit_overrides WHERE user_id = $12), 1))) AS cost
    FROM items
), share AS (
    INSERT INTO fair_share AS f (user_id, class, finish_at)
    SELECT $12, $17, d.clock + d.cost * d.n FROM demand d
    ON CONFLICT (user_id, class) DO UPDATE
    SET finish_at = (SELECT GREATEST(f.finish_at, d.clock) + d.cost * d.n FROM demand d)
    RETURNING f.finish_at
)
INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, priority, metadata)
SELECT t.job_id, 'llm::generation', t.job, 'Pending', 0, t.job_max_attempts,
       LEAST(s.finish_at - d.cost * (d.n - t.ord), TIMESTAMPTZ '1999-12-31 00:00:00+00'),
       $17, ''::hstore
FROM items t CROSS JOIN demand d CROSS JOIN share s
