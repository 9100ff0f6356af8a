-- Every user's usage per day, user and model within a range of days, in that order, one page
-- after the previous page's last row (keyset); the shards of a (user, day, model) are summed.
--
-- Parameters:
--   $1 from date            $2 to date               (inclusive)
--   $3 after_day date       $4 after_user uuid       $5 after_model text
--                           (the previous page's last row; all NULL for the first page)
--   $6 limit bigint         rows to answer
SELECT day, user_id, model,
       SUM(requests)::bigint AS requests,
       SUM(cached_requests)::bigint AS cached_requests,
       SUM(prompt_tokens)::bigint AS prompt_tokens,
       SUM(completion_tokens)::bigint AS completion_tokens,
       SUM(cost_usd)::float8 AS cost_usd
FROM usage_daily
WHERE day BETWEEN $1 AND $2
  AND ($3::date IS NULL OR (day, user_id, model) > ($3::date, $4::uuid, $5::varchar))
GROUP BY day, user_id, model
ORDER BY day, user_id, model
LIMIT $6
