-- Named queries of the lifecycle relay (sources/lifecycle_relay.py): snapshot
-- windows over the outbox tables (transitions, dataset_events, alerts), read
-- past a durable cursor per partition of run ids (migration 0018).

-- name: lifecycle_create_cursors
-- The first relay of a group starts publishing at the present: history
-- before it is not published. Several relays starting at once create one set.
INSERT INTO lifecycle_cursors (part, parts, done, done_at)
SELECT p, $1, pg_current_snapshot(), clock_timestamp() FROM generate_series(0, $1 - 1) AS p
WHERE NOT EXISTS (SELECT 1 FROM lifecycle_cursors)
ON CONFLICT (part) DO NOTHING;

-- name: lifecycle_parts
SELECT max(parts) AS parts FROM lifecycle_cursors;

-- name: lifecycle_claim
-- $1 owner, $2 lease seconds, $3 due only (else any free one): lease a
-- partition no one holds, and open its next window (the present snapshot)
-- unless one is half published.
UPDATE lifecycle_cursors c
SET lease_owner = $1,
    lease_until = now() + make_interval(secs => $2),
    window_to = coalesce(c.window_to, pg_current_snapshot()),
    window_at = CASE WHEN c.window_to IS NULL THEN clock_timestamp() ELSE c.window_at END
WHERE c.part = (
    SELECT part FROM lifecycle_cursors
    WHERE (next_at <= now() OR NOT $3) AND (lease_until IS NULL OR lease_until < now())
    ORDER BY next_at, part
    LIMIT 1
    FOR UPDATE SKIP LOCKED)
RETURNING c.part, c.parts, c.done::text AS done, c.done_at, c.window_to::text AS window_to,
          c.after_stage, c.after_id;

-- name: lifecycle_window
-- $1 done, $2 window_to (snapshots), $3 parts, $4 part, ($5 stage, $6 id) the
-- last published, $7 limit, $8 CloudEvents source. The rows committed after
-- `done` and before `window_to` of this partition, as CloudEvents 1.0 JSON,
-- in (stage, id) order. Within a window ids follow commit order per run: a
-- change that waited for another's commit takes its ids after it.
WITH w AS (
    SELECT $1::text::pg_snapshot AS done, $2::text::pg_snapshot AS upto,
           pg_snapshot_xmin($1::text::pg_snapshot)::text::bigint AS lo,
           pg_snapshot_xmax($2::text::pg_snapshot)::text::bigint AS hi
), changes AS (
    SELECT 0 AS stage, t.id, t.run_id::text AS key, jsonb_build_object(
        'specversion', '1.0',
        'id', 'transition-' || t.id,
        'source', $8::text,
        'type', 'orchestrator.' || CASE WHEN t.task_id IS NULL THEN 'run' ELSE 'task' END
                || '.' || t.to_state,
        'subject', 'runs/' || t.run_id || coalesce('/tasks/' || t.task_id, ''),
        'time', to_char(t.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'datacontenttype', 'application/json',
        'data', jsonb_build_object(
            'run_id', t.run_id, 'workflow', r.workflow, 'task_id', t.task_id,
            'from_state', t.from_state, 'to_state', t.to_state, 'attempt', t.attempt,
            'actor', t.actor, 'reason', t.reason))::text AS event
    FROM w, transitions t LEFT JOIN runs r ON r.id = t.run_id
    WHERE t.txid >= w.lo AND t.txid < w.hi
      AND pg_visible_in_snapshot(t.txid::text::xid8, w.upto)
      AND NOT pg_visible_in_snapshot(t.txid::text::xid8, w.done)
      AND t.run_id % $3 = $4
      AND (0, t.id) > ($5::integer, $6::bigint)
    UNION ALL
    SELECT 1, d.id, coalesce(d.run_id::text, d.uri), jsonb_build_object(
        'specversion', '1.0',
        'id', 'dataset-update-' || d.id,
        'source', $8::text,
        'type', 'orchestrator.dataset.updated',
        'subject', 'datasets/' || d.uri,
        'time', to_char(d.recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'datacontenttype', 'application/json',
        'data', jsonb_build_object(
            'uri', d.uri, 'event_id', d.event_id, 'workflow', d.workflow, 'run_id', d.run_id,
            'task_id', d.task_id, 'logical_date', d.logical_date, 'metadata', d.metadata))::text
    FROM w, dataset_events d
    WHERE d.txid >= w.lo AND d.txid < w.hi
      AND pg_visible_in_snapshot(d.txid::text::xid8, w.upto)
      AND NOT pg_visible_in_snapshot(d.txid::text::xid8, w.done)
      AND coalesce(d.run_id, hashtext(d.uri)::bigint & 2147483647) % $3 = $4
      AND (1, d.id) > ($5::integer, $6::bigint)
    UNION ALL
    SELECT 2, a.id, a.run_id::text, jsonb_build_object(
        'specversion', '1.0',
        'id', 'alert-' || a.id,
        'source', $8::text,
        'type', 'orchestrator.alert.' || a.kind,
        'subject', 'runs/' || a.run_id || CASE WHEN a.task_id = '' THEN '' ELSE '/tasks/' || a.task_id END,
        'time', to_char(a.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'datacontenttype', 'application/json',
        'data', jsonb_build_object(
            'alert_id', a.id, 'kind', a.kind, 'rule', a.rule, 'workflow', a.workflow,
            'run_id', a.run_id, 'task_id', nullif(a.task_id, ''), 'attempt', a.attempt,
            'error', a.error, 'detail', a.detail))::text
    FROM w, alerts a
    WHERE a.txid >= w.lo AND a.txid < w.hi
      AND pg_visible_in_snapshot(a.txid::text::xid8, w.upto)
      AND NOT pg_visible_in_snapshot(a.txid::text::xid8, w.done)
      AND a.run_id % $3 = $4
      AND (2, a.id) > ($5::integer, $6::bigint)
)
SELECT stage, id, key, event FROM changes ORDER BY stage, id LIMIT $7;

-- name: lifecycle_checkpoint
-- $1 part, $2 owner, ($3 stage, $4 id) published so far, $5 how many more,
-- $6 lease seconds. No row: the lease was lost (another relay took over).
UPDATE lifecycle_cursors
SET after_stage = $3, after_id = $4, published = published + $5,
    lease_until = now() + make_interval(secs => $6)
WHERE part = $1 AND lease_owner = $2
RETURNING part;

-- name: lifecycle_finish
-- $1 part, $2 owner, $3 published in the last page, $4 seconds until the
-- partition is looked at again: the window is done, the lease released.
UPDATE lifecycle_cursors
SET done = window_to, done_at = window_at, window_to = NULL, window_at = NULL,
    after_stage = 0, after_id = 0, published = published + $3,
    lease_owner = NULL, lease_until = NULL,
    next_at = now() + make_interval(secs => $4)
WHERE part = $1 AND lease_owner = $2 AND window_to IS NOT NULL
RETURNING least(done_at, (SELECT min(o.done_at) FROM lifecycle_cursors o WHERE o.part <> $1))
          AS published_through;

-- name: lifecycle_release
-- $1 part, $2 owner: stop without finishing (shutdown); the window stays half
-- published and the next claim goes on from its last checkpoint.
UPDATE lifecycle_cursors SET lease_owner = NULL, lease_until = NULL
WHERE part = $1 AND lease_owner = $2;

-- name: lifecycle_horizon
-- Every change committed before `published_through` is published.
SELECT min(done_at) AS published_through, sum(published)::bigint AS published,
       count(*) FILTER (WHERE lease_until >= now()) AS leased
FROM lifecycle_cursors;
