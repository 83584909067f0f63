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
-- last published, $7 limit. The rows committed after `done` and before
-- `window_to` of this partition, in (stage, id) order, with what their
-- CloudEvents carry (sources/lifecycle_events.py): stage 0 transitions,
-- 1 dataset updates, 2 alerts. Within a window ids follow commit order per
-- run: a change that waited for another's commit takes its ids after it.
-- The txid and id bounds are constants of the statement, so the BRIN indexes
-- find the recent block ranges and the primary keys skip what earlier pages
-- of a large window published.
WITH page AS (
    (SELECT 0 AS stage, t.id, t.run_id, t.task_id, t.from_state, t.to_state, t.attempt,
            t.at, t.actor, t.reason, NULL::text AS workflow, NULL::text AS uri,
            NULL::bigint AS event_id, NULL::timestamptz AS logical_date, NULL::text AS metadata,
            NULL::text AS rule, NULL::text AS kind, NULL::text AS error, NULL::text AS detail
     FROM transitions t
     WHERE t.txid >= pg_snapshot_xmin($1::text::pg_snapshot)::text::bigint
       AND t.txid < pg_snapshot_xmax($2::text::pg_snapshot)::text::bigint
       AND pg_visible_in_snapshot(t.txid::text::xid8, $2::text::pg_snapshot)
       AND NOT pg_visible_in_snapshot(t.txid::text::xid8, $1::text::pg_snapshot)
       AND t.run_id % $3 = $4
       AND $5::integer = 0 AND t.id > $6::bigint
     ORDER BY t.id LIMIT $7)
    UNION ALL
    (SELECT 1, d.id, d.run_id, d.task_id, NULL, NULL, NULL,
            d.recorded_at, NULL, NULL, d.workflow, d.uri,
            d.event_id, d.logical_date, d.metadata::text,
            NULL, NULL, NULL, NULL
     FROM dataset_events d
     WHERE d.txid >= pg_snapshot_xmin($1::text::pg_snapshot)::text::bigint
       AND d.txid < pg_snapshot_xmax($2::text::pg_snapshot)::text::bigint
       AND pg_visible_in_snapshot(d.txid::text::xid8, $2::text::pg_snapshot)
       AND NOT pg_visible_in_snapshot(d.txid::text::xid8, $1::text::pg_snapshot)
       AND coalesce(d.run_id, hashtext(d.uri)::bigint & 2147483647) % $3 = $4
       AND $5::integer <= 1 AND d.id > CASE WHEN $5::integer = 1 THEN $6::bigint ELSE 0 END
     ORDER BY d.id LIMIT $7)
    UNION ALL
    (SELECT 2, a.id, a.run_id, nullif(a.task_id, ''), NULL, NULL, a.attempt,
            a.created_at, NULL, NULL, a.workflow, NULL,
            NULL, NULL, NULL,
            a.rule, a.kind, a.error, a.detail
     FROM alerts a
     WHERE a.txid >= pg_snapshot_xmin($1::text::pg_snapshot)::text::bigint
       AND a.txid < pg_snapshot_xmax($2::text::pg_snapshot)::text::bigint
       AND pg_visible_in_snapshot(a.txid::text::xid8, $2::text::pg_snapshot)
       AND NOT pg_visible_in_snapshot(a.txid::text::xid8, $1::text::pg_snapshot)
       AND a.run_id % $3 = $4
       AND a.id > CASE WHEN $5::integer = 2 THEN $6::bigint ELSE 0 END
     ORDER BY a.id LIMIT $7)
    ORDER BY stage, id LIMIT $7
)
SELECT p.stage, p.id, p.run_id, p.task_id, p.from_state, p.to_state, p.attempt, p.at,
       p.actor, p.reason, coalesce(p.workflow, r.workflow) AS workflow, p.uri, p.event_id,
       p.logical_date, p.metadata, p.rule, p.kind, p.error, p.detail
FROM page p LEFT JOIN runs r ON p.stage = 0 AND r.id = p.run_id
ORDER BY p.stage, p.id;

-- name: lifecycle_summarize
-- Summarize the BRIN ranges filled since the last call (complete ranges only,
-- so inserts never widen a summary): a window reads every range not yet
-- summarized, and autovacuum alone would leave up to a minute of them.
SELECT brin_summarize_new_values('transitions_by_txid'::regclass)
     + brin_summarize_new_values('dataset_events_by_txid'::regclass)
     + brin_summarize_new_values('alerts_by_txid'::regclass) AS ranges;

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
