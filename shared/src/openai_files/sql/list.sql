-- A page of one user's files, without their content: newest first, or oldest first when $4;
-- after the file $3 in that order; of the purpose $2 if given.
SELECT id, purpose, filename, bytes, created_at
FROM openai_files
WHERE user_id = $1
  AND ($2::text IS NULL OR purpose = $2)
  AND ($3::uuid IS NULL OR CASE WHEN $4 THEN id > $3 ELSE id < $3 END)
ORDER BY CASE WHEN $4 THEN id END ASC, CASE WHEN NOT $4 THEN id END DESC
LIMIT $5
