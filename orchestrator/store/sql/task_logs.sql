-- Named queries of task logs (see orchestrator/task_logs.py).

-- name: insert_task_logs
-- One statement for a whole batch of chunks, in the order given.
INSERT INTO task_logs (run_id, task_id, attempt, stream, body)
SELECT run_id, task_id, attempt, stream, body
FROM unnest($1::bigint[], $2::text[], $3::integer[], $4::text[], $5::text[])
    WITH ORDINALITY AS chunk(run_id, task_id, attempt, stream, body, n)
ORDER BY n;

-- name: task_log_chunks
-- The chunks of one attempt after chunk id $4, oldest first.
SELECT id, stream, logged_at, body FROM task_logs
WHERE run_id = $1 AND task_id = $2 AND attempt = $3 AND id > $4
ORDER BY id
LIMIT $5;

-- name: task_log_last_chunks
-- The newest chunks of one attempt, newest first (for a failed attempt's tail).
SELECT id, stream, logged_at, body FROM task_logs
WHERE run_id = $1 AND task_id = $2 AND attempt = $3
ORDER BY id DESC
LIMIT $4;

-- name: task_log_attempt
-- The task's current attempt and state, to pick the default attempt and to
-- know when following a log may stop.
SELECT attempt, state::text AS state FROM task_instances WHERE run_id = $1 AND task_id = $2;
