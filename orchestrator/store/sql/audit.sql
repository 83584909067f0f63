-- name: record_audit
-- $1 actor, $2 action, $3 workflow, $4 run id, $5 task id, $6 reason, $7 detail json
INSERT INTO audit (actor, action, workflow, run_id, task_id, reason, detail)
VALUES ($1, $2, $3, $4, $5, coalesce($6, ''), coalesce($7::jsonb, '{}'))
RETURNING id, at;

-- name: audit_entries
-- Newest first; $1 workflow, $2 run id, $3 action (each NULL: any), $4 before id, $5 limit
SELECT id, at, actor, action, workflow, run_id, task_id, reason, detail::text AS detail
FROM audit
WHERE ($1::text IS NULL OR workflow = $1)
  AND ($2::bigint IS NULL OR run_id = $2)
  AND ($3::text IS NULL OR action = $3)
  AND ($4::bigint IS NULL OR id < $4)
ORDER BY id DESC
LIMIT $5;
