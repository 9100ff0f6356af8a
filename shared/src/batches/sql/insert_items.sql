-- Stores the requests of a batch, pending, in their order in the batch (`batch_index` from 0).
--
-- Parameters, one array per column, one element per item:
--   $1 id uuid[]            $2 prompt text[]          $3 context jsonb[]
--   $4 model text[]         $5 metadata jsonb[]       $6 parameters jsonb[]
--   $7 job_id text[]        $8 max_attempts int4[]    $9 cache_key text[]
--   $10 cache_policy jsonb[] $11 estimated_tokens int4[]
-- and, the same for every item:
--   $12 user_id uuid        $13 batch_id uuid         $14 trace_id text
INSERT INTO generation_requests
    (id, prompt, context, model, user_id, metadata, parameters, job_id, max_attempts,
     cache_key, cache_policy, estimated_tokens, batch_id, batch_index, trace_id)
SELECT t.id, t.prompt, t.context, t.model, $12, t.metadata, t.parameters, t.job_id,
       t.max_attempts, t.cache_key, t.cache_policy, t.estimated_tokens, $13, t.ord - 1,
       $14
FROM UNNEST($1::uuid[], $2::text[], $3::jsonb[], $4::text[], $5::jsonb[], $6::jsonb[],
            $7::text[], $8::int4[], $9::text[], $10::jsonb[], $11::int4[])
     WITH ORDINALITY
     AS t(id, prompt, context, model, metadata, parameters, job_id, max_attempts,
          cache_key, cache_policy, estimated_tokens, ord)
