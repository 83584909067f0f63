-- Named queries of the triggerer: the timers of waiting deferrals.
-- A wait's due time is least(wake_at, timeout_at) (least() ignores NULLs), the
-- expression of the partial index deferrals_waiting_due.

-- name: triggerer_last_id
SELECT coalesce(max(id), 0) AS id FROM deferrals;

-- name: triggerer_due_between
-- $1 from (inclusive), $2 until (exclusive), $3 limit: the earliest waits due
-- in [$1, $2), in due order.
SELECT id, least(wake_at, timeout_at) AS due
FROM deferrals
WHERE state = 'waiting'
  AND least(wake_at, timeout_at) >= $1 AND least(wake_at, timeout_at) < $2
ORDER BY least(wake_at, timeout_at), id
LIMIT $3;

-- name: triggerer_new
-- $1 last id seen, $2 ids below it not seen yet (their transaction was still
-- open), $3 limit. Every row is returned, waiting or not, so that an id
-- missing from the answer means "not committed yet"; due is NULL for a row
-- that is no longer waiting or has no time. Two index reads, not one OR: an
-- OR of both conditions walks the primary key from its first row, so each
-- look cost as much as every wait ever recorded.
SELECT id, due FROM (
    (SELECT id, CASE WHEN state = 'waiting' THEN least(wake_at, timeout_at) END AS due
     FROM deferrals
     WHERE id > $1
     ORDER BY id
     LIMIT $3)
    UNION ALL
    SELECT id, CASE WHEN state = 'waiting' THEN least(wake_at, timeout_at) END
    FROM deferrals
    WHERE id = ANY($2::bigint[]) AND id <= $1
) found
ORDER BY id
LIMIT $3;

-- name: triggerer_waits
-- The waits whose time may have come ($1 id[]), read again just before they
-- are ended: anything resolved meanwhile (by an event, another triggerer) is
-- left out, and the fresh times decide between waking and timing out.
SELECT id, wake_at, timeout_at, on_timeout, created_at, description, kind,
       config::text AS config, run_id, task_id, attempt
FROM deferrals
WHERE id = ANY($1::bigint[]) AND state = 'waiting';

-- name: poll_again
-- A poll said "not yet": its next check, guarded so an ended wait stays ended.
-- $4 the clock's time (NULL: the database's)
UPDATE deferrals
SET wake_at = coalesce($4::timestamptz, now()) + make_interval(secs => $2),
    config = jsonb_set(config, '{checks}', to_jsonb($3::integer))
WHERE id = $1 AND state = 'waiting'
-- Due at the next check or at the time limit, whichever comes first.
RETURNING least(wake_at, timeout_at) AS due;
