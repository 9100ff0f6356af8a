-- A page of a batch's finished requests in the batch's order, after the index $2: the
-- completed ones when $3 (the output file), else the failed and cancelled ones (the error
-- file). At most $4.
SELECT id, status, model, prompt, context, parameters, metadata, result, provider,
       provider_model, served_model, tokens_used, prompt_tokens, completion_tokens,
       finish_reason, tool_calls, cost_usd, cached, error_code, error_message, attempts, max_attempts,
       created_at, started_at, completed_at, updated_at,
       batch_index, metadata->>'batch_custom_id' AS custom_id
FROM generation_requests
WHERE batch_id = $1
  AND batch_index > $2
  AND CASE WHEN $3 THEN status = 'completed' ELSE status IN ('failed', 'cancelled') END
ORDER BY batch_index
LIMIT $4
