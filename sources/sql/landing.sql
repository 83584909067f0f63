-- Named queries of the landing zone (sources/files.py).

-- name: landing_last_recorded
-- The last recorded file event of each path, with the move state of its file:
-- a file moved to processed/ or failed/ is gone, so the same content dropped
-- again is new.
-- $1 relative paths
SELECT DISTINCT ON (e.channel) e.channel, e.dedup_key, m.state AS move_state
FROM events e
LEFT JOIN landing_moves m ON m.event_id = e.id
WHERE e.source = 'file' AND e.channel = ANY($1::text[])
ORDER BY e.channel, e.id DESC;

-- name: insert_landing_moves
-- $1 event_id[], $2 path[], $3 sha256[]
INSERT INTO landing_moves (event_id, path, sha256)
SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[])
ON CONFLICT (event_id) DO NOTHING;

-- name: landing_moves_due
-- Pending moves whose event's runs have all ended; `succeeded` when every one
-- of them succeeded. $1 terminal run states, $2 limit
SELECT m.event_id, m.path, m.sha256, m.target, bool_and(r.state = 'success') AS succeeded
FROM landing_moves m
JOIN events e ON e.id = m.event_id
JOIN runs r ON r.id = ANY (e.run_ids)
WHERE m.state = 'pending'
GROUP BY m.event_id
HAVING bool_and(r.state = ANY ($1::run_state[]))
ORDER BY m.event_id
LIMIT $2;

-- name: landing_move_targets
-- Stores the targets of a pass's moves before any file moves, keeping those
-- chosen before a crash; returns the moves still pending with their target.
-- A move another mover holds right now is skipped (never waited on).
-- $1 event_id[], $2 proposed target[]
WITH due AS (
    SELECT event_id FROM landing_moves
    WHERE event_id = ANY ($1::bigint[]) AND state = 'pending'
    FOR UPDATE SKIP LOCKED
)
UPDATE landing_moves m SET target = coalesce(m.target, p.target)
FROM due, unnest($1::bigint[], $2::text[]) AS p (event_id, target)
WHERE m.event_id = due.event_id AND p.event_id = due.event_id
RETURNING m.event_id, m.target;

-- name: landing_moves_done
-- $1 event_id[], $2 state[] ('processed', 'failed' or 'skipped')
WITH due AS (
    SELECT event_id FROM landing_moves
    WHERE event_id = ANY ($1::bigint[]) AND state = 'pending'
    FOR UPDATE SKIP LOCKED
)
UPDATE landing_moves m SET state = d.state, moved_at = now()
FROM due, unnest($1::bigint[], $2::text[]) AS d (event_id, state)
WHERE m.event_id = due.event_id AND d.event_id = due.event_id;
