-- Named queries of retention: batched deletes of ended history.

-- name: prune_runs
-- Ended runs older than the cutoff, with their task instances (cascade) and
-- transitions; a live run is never touched.
WITH doomed AS (
    SELECT id FROM runs
    WHERE ended_at < $1 AND state IN ('success', 'failed', 'cancelled')
    ORDER BY ended_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), history AS (
    DELETE FROM transitions WHERE run_id IN (SELECT id FROM doomed)
)
DELETE FROM runs WHERE id IN (SELECT id FROM doomed) RETURNING id;

-- name: prune_events
-- Old events that no live run still needs.
WITH doomed AS (
    SELECT e.id FROM events e
    WHERE e.received_at < $1
      AND NOT EXISTS (
          SELECT 1 FROM runs r
          WHERE r.id = ANY(e.run_ids) AND r.state IN ('queued', 'running'))
      -- A paused workflow starts its run at unpause (migration 0010).
      AND NOT EXISTS (
          SELECT 1 FROM held_events h WHERE h.event_id = e.id AND h.state = 'buffered')
      -- A sensor of a live run may not have started yet: keep the events it
      -- could be waiting for (those with correlation keys since that run began).
      AND NOT (
          EXISTS (SELECT 1 FROM event_keys k WHERE k.event_id = e.id)
          AND e.received_at >= coalesce(
              (SELECT min(created_at) FROM runs WHERE state IN ('queued', 'running')),
              'infinity'))
    ORDER BY e.received_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
DELETE FROM events WHERE id IN (SELECT id FROM doomed) RETURNING id;

-- name: prune_dead_letters
WITH doomed AS (
    SELECT id FROM dead_letter_events WHERE received_at < $1
    ORDER BY received_at LIMIT $2 FOR UPDATE SKIP LOCKED
)
DELETE FROM dead_letter_events WHERE id IN (SELECT id FROM doomed) RETURNING id;

-- name: count_prunable
SELECT
    (SELECT count(*) FROM runs
      WHERE ended_at < $1 AND state IN ('success', 'failed', 'cancelled')) AS runs,
    (SELECT count(*) FROM events e
      WHERE e.received_at < $1
        AND NOT EXISTS (SELECT 1 FROM runs r
                        WHERE r.id = ANY(e.run_ids) AND r.state IN ('queued', 'running'))
        AND NOT EXISTS (SELECT 1 FROM held_events h
                        WHERE h.event_id = e.id AND h.state = 'buffered')
        AND NOT (
            EXISTS (SELECT 1 FROM event_keys k WHERE k.event_id = e.id)
            AND e.received_at >= coalesce(
                (SELECT min(created_at) FROM runs WHERE state IN ('queued', 'running')),
                'infinity')))
        AS events,
    (SELECT count(*) FROM dead_letter_events WHERE received_at < $1) AS dead_letters;
