-- Named queries of detached backfills.

-- name: insert_backfill
-- $1 workflow, $2 start, $3 end, $4 cron, $5 timezone, $6 reprocess, $7 max_active,
-- $8 actor, $9 reason, $10 counts json
INSERT INTO backfills (workflow, range_start, range_end, cron, timezone, reprocess,
                       max_active, actor, reason, counts)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb)
RETURNING id;

-- name: backfill_by_id
SELECT id, workflow, range_start, range_end, cron, timezone, reprocess, max_active, state,
       actor, reason, cursor_date, active, counts::text AS counts, message, created_at,
       updated_at, ended_at
FROM backfills WHERE id = $1;

-- name: list_backfills
-- Newest first; $1 workflow, $2 state (NULL: any), $3 limit
SELECT id, workflow, range_start, range_end, cron, timezone, reprocess, max_active, state,
       actor, reason, cursor_date, active, counts::text AS counts, message, created_at,
       updated_at, ended_at
FROM backfills
WHERE ($1::text IS NULL OR workflow = $1) AND ($2::text IS NULL OR state = $2)
ORDER BY id DESC
LIMIT $3;

-- name: running_backfill_ids
SELECT id FROM backfills WHERE state = 'running' ORDER BY id;

-- name: backfill_step
-- One step of the leader's driving; only a running backfill moves.
-- $1 id, $2 cursor, $3 active run ids, $4 counts json, $5 state, $6 message
UPDATE backfills
SET cursor_date = $2, active = $3, counts = $4::jsonb, state = $5, message = $6,
    updated_at = now(), ended_at = CASE WHEN $5 = 'running' THEN NULL ELSE now() END
WHERE id = $1 AND state = 'running'
RETURNING id;

-- name: cancel_backfill
-- $1 id, $2 message; runs already started go on.
UPDATE backfills
SET state = 'cancelled', message = $2, updated_at = now(), ended_at = now()
WHERE id = $1 AND state = 'running'
RETURNING id;
