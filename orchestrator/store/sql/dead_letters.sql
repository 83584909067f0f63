-- Named queries of dead letters: listing them and sending them through
-- routing again (redrive).

-- name: list_dead_letters
-- Newest first; $1 source, $2 workflow (NULL: any), $3 ids below (the
-- cursor), $4 limit, $5 redriven or not (NULL: either)
SELECT d.id, d.source, d.channel, d.dedup_key, d.event_id, d.workflow, d.reason,
       d.received_at, d.attempts, d.last_attempt_at, d.redriven_at, d.redriven_by,
       d.redrive_event_id, d.redrive_run_ids
FROM dead_letter_events d
WHERE ($1::text IS NULL OR d.source = $1)
  AND ($2::text IS NULL OR d.workflow = $2)
  AND ($3::bigint IS NULL OR d.id < $3)
  AND ($5::boolean IS NULL OR (d.redriven_at IS NOT NULL) = $5)
ORDER BY d.id DESC
LIMIT $4;

-- name: dead_letter
-- One dead letter with what its event recorded (payload, headers, meta).
SELECT d.id, d.source, d.channel, d.dedup_key, d.event_id, d.workflow, d.reason, d.raw,
       d.headers::text AS headers, d.meta::text AS meta, d.received_at, d.attempts,
       d.last_attempt_at, d.redriven_at, d.redriven_by, d.redrive_event_id, d.redrive_run_ids,
       e.payload::text AS payload, e.headers::text AS event_headers, e.meta::text AS event_meta,
       e.run_ids AS event_run_ids
FROM dead_letter_events d LEFT JOIN events e ON e.id = d.event_id
WHERE d.id = $1;

-- name: lock_dead_letter
-- Taken before a redrive: concurrent redrives of one letter go one at a time.
SELECT id, redriven_at FROM dead_letter_events WHERE id = $1 FOR UPDATE;

-- name: pending_dead_letter_ids
-- Dead letters not redriven yet, oldest first; $1 workflow (NULL: any)
SELECT id FROM dead_letter_events
WHERE redriven_at IS NULL AND ($1::text IS NULL OR workflow = $1)
ORDER BY id;

-- name: dead_letter_redriven
-- $1 id, $2 actor, $3 event id, $4 run ids
UPDATE dead_letter_events
SET redriven_at = now(), redriven_by = $2, redrive_event_id = $3, redrive_run_ids = $4,
    attempts = attempts + 1, last_attempt_at = now()
WHERE id = $1 AND redriven_at IS NULL
RETURNING id;

-- name: dead_letter_failed_again
-- $1 id, $2 the new reason
UPDATE dead_letter_events
SET reason = $2, attempts = attempts + 1, last_attempt_at = now()
WHERE id = $1 AND redriven_at IS NULL
RETURNING attempts;

-- name: add_event_runs
-- Runs a redriven event started, added to those it started when it arrived.
UPDATE events SET run_ids = run_ids || $2::bigint[] WHERE id = $1;

-- name: dead_letters_exist
SELECT id FROM dead_letter_events WHERE id = ANY($1::bigint[]);

-- name: workflows_of_runs
SELECT DISTINCT workflow FROM runs WHERE id = ANY($1::bigint[]);
