-- Named queries of retention: batched deletes of ended history.

-- name: prune_runs
-- Ended runs older than the cutoff, with their task instances (cascade),
-- transitions, task logs and alerts; a live run is never touched.
WITH doomed AS (
    SELECT id FROM runs
    WHERE ended_at < $1 AND state IN ('success', 'failed', 'cancelled')
      -- $3: lifecycle events are on (migration 0018). A row is published
      -- once visible in its partition's `done` snapshot; keep the run until then.
      AND (NOT $3 OR NOT EXISTS (
          SELECT 1 FROM transitions t JOIN lifecycle_cursors c ON c.part = t.run_id % c.parts
          WHERE t.run_id = runs.id AND t.txid IS NOT NULL
            AND NOT pg_visible_in_snapshot(t.txid::text::xid8, c.done)))
      AND (NOT $3 OR NOT EXISTS (
          SELECT 1 FROM alerts a JOIN lifecycle_cursors c ON c.part = a.run_id % c.parts
          WHERE a.run_id = runs.id AND a.txid IS NOT NULL
            AND NOT pg_visible_in_snapshot(a.txid::text::xid8, c.done)))
    ORDER BY ended_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), history AS (
    DELETE FROM transitions WHERE run_id IN (SELECT id FROM doomed)
), ledger AS (
    -- A date once processed stays processed: backfills and the scheduler
    -- read this ledger, so pruning a run never lets its date run again.
    INSERT INTO logical_dates_pruned (workflow, logical_date, run_id, state, ended_at)
    SELECT workflow, logical_date, id, state::text, ended_at FROM runs
    WHERE id IN (SELECT id FROM doomed) AND logical_date IS NOT NULL
    ON CONFLICT (workflow, logical_date) DO NOTHING
), logs AS (
    DELETE FROM task_logs WHERE run_id IN (SELECT id FROM doomed)
), raised AS (
    DELETE FROM alerts WHERE run_id IN (SELECT id FROM doomed)
)
DELETE FROM runs WHERE id IN (SELECT id FROM doomed) RETURNING id;

-- name: prune_events
-- Old events that no live run still needs, and whose dataset update (if
-- any) is published when lifecycle events are on ($3).
WITH doomed AS (
    SELECT e.id FROM events e
    WHERE e.received_at < $1
      AND (NOT $3 OR NOT EXISTS (
          SELECT 1 FROM dataset_events d
          JOIN lifecycle_cursors c
            ON c.part = coalesce(d.run_id, hashtext(d.uri)::bigint & 2147483647) % c.parts
          WHERE d.event_id = e.id AND d.txid IS NOT NULL
            AND NOT pg_visible_in_snapshot(d.txid::text::xid8, c.done)))
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

-- name: prune_dataset_alerts
-- Alerts about a dataset (no run) older than the cutoff, once published when
-- lifecycle events are on ($3); their deliveries go with them (cascade).
WITH doomed AS (
    SELECT a.id FROM alerts a
    WHERE a.run_id IS NULL AND a.created_at < $1
      AND (NOT $3 OR NOT EXISTS (
          SELECT 1 FROM lifecycle_cursors c
          WHERE c.part = (hashtext(a.dataset)::bigint & 2147483647) % c.parts
            AND a.txid IS NOT NULL AND NOT pg_visible_in_snapshot(a.txid::text::xid8, c.done)))
    ORDER BY a.created_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
DELETE FROM alerts WHERE id IN (SELECT id FROM doomed) RETURNING id;

-- name: count_prunable
-- $1 cutoff, $2 lifecycle events are on (as prune_runs' $3).
SELECT
    (SELECT count(*) FROM runs
      WHERE ended_at < $1 AND state IN ('success', 'failed', 'cancelled')
        AND (NOT $2 OR NOT EXISTS (
            SELECT 1 FROM transitions t JOIN lifecycle_cursors c ON c.part = t.run_id % c.parts
            WHERE t.run_id = runs.id AND t.txid IS NOT NULL
              AND NOT pg_visible_in_snapshot(t.txid::text::xid8, c.done)))
        AND (NOT $2 OR NOT EXISTS (
            SELECT 1 FROM alerts a JOIN lifecycle_cursors c ON c.part = a.run_id % c.parts
            WHERE a.run_id = runs.id AND a.txid IS NOT NULL
              AND NOT pg_visible_in_snapshot(a.txid::text::xid8, c.done)))) AS runs,
    (SELECT count(*) FROM events e
      WHERE e.received_at < $1
        AND (NOT $2 OR NOT EXISTS (
            SELECT 1 FROM dataset_events d
            JOIN lifecycle_cursors c
              ON c.part = coalesce(d.run_id, hashtext(d.uri)::bigint & 2147483647) % c.parts
            WHERE d.event_id = e.id AND d.txid IS NOT NULL
              AND NOT pg_visible_in_snapshot(d.txid::text::xid8, c.done)))
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
    (SELECT count(*) FROM dead_letter_events WHERE received_at < $1) AS dead_letters,
    (SELECT count(*) FROM alerts a
      WHERE a.run_id IS NULL AND a.created_at < $1
        AND (NOT $2 OR NOT EXISTS (
            SELECT 1 FROM lifecycle_cursors c
            WHERE c.part = (hashtext(a.dataset)::bigint & 2147483647) % c.parts
              AND a.txid IS NOT NULL
              AND NOT pg_visible_in_snapshot(a.txid::text::xid8, c.done)))) AS dataset_alerts;

-- name: logical_dates_pruned
-- $1 workflow, $2 logical_date[]: which of these dates had a run that
-- retention deleted (the run's id and how it ended).
SELECT logical_date, run_id, state, ended_at, pruned_at
FROM logical_dates_pruned WHERE workflow = $1 AND logical_date = ANY($2::timestamptz[]);
