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

-- name: lifecycle_join
-- $1 owner, $2 lease seconds: this relay is alive (it counts in every relay's
-- share of the partitions); relays unseen for ten leases are forgotten.
WITH forgotten AS (
    DELETE FROM lifecycle_relays
    WHERE seen_at < now() - make_interval(secs => $2 * 10) AND owner <> $1
)
INSERT INTO lifecycle_relays AS r (owner, seen_at) VALUES ($1, now())
ON CONFLICT (owner) DO UPDATE SET seen_at = excluded.seen_at;

-- name: lifecycle_leave
DELETE FROM lifecycle_relays WHERE owner = $1;

-- name: lifecycle_claim
-- $1 owner, $2 lease seconds, $3 due only (else any free one): lease this
-- relay's share of the partitions no one else holds (its own: a pass that
-- failed goes on from its checkpoint at once; all of them when it is alone,
-- so that one read publishes every partition's window), and open their next
-- window (the present snapshot, the same for all) unless one is half
-- published.
WITH free AS (
    SELECT part FROM lifecycle_cursors
    WHERE (next_at <= now() OR NOT $3)
      AND (lease_until IS NULL OR lease_until < now() OR lease_owner = $1)
    ORDER BY next_at, part
    LIMIT (SELECT ceil(max(parts)::numeric / greatest(1, (
               SELECT count(*) FROM lifecycle_relays
               WHERE seen_at >= now() - make_interval(secs => $2))))::bigint
           FROM lifecycle_cursors)
    FOR UPDATE SKIP LOCKED
)
UPDATE lifecycle_cursors c
SET lease_owner = $1,
    lease_until = now() + make_interval(secs => $2),
    window_to = coalesce(c.window_to, pg_current_snapshot()),
    window_at = CASE WHEN c.window_to IS NULL THEN clock_timestamp() ELSE c.window_at END
FROM free
WHERE c.part = free.part
RETURNING c.part, c.parts, c.done::text AS done, c.done_at, c.window_to::text AS window_to,
          c.after_stage, c.after_id;

-- name: lifecycle_window
-- $1 done, $2 window_to (snapshots), $3 parts, $4 the partitions (all with
-- this done, window_to and last published row), ($5 stage, $6 id) the last
-- published, $7 limit. The rows committed after `done` and before
-- `window_to` of these partitions, in (stage, id) order, with their partition
-- and what their CloudEvents carry (sources/lifecycle_events.py): stage 0
-- transitions, 1 dataset updates, 2 alerts (a dataset's own, with no run, partitioned
-- by its URI like an external update). Within a window ids follow commit
-- order per run: a change that waited for another's commit takes its ids
-- after it. A transition's workflow is its run's (lifecycle_run_workflows:
-- once per run, where joining the runs cost as much as the rest per row).
-- The txid and id bounds are constants of the statement, so the BRIN indexes
-- find the recent block ranges and the primary keys skip what earlier pages
-- of a large window published; a window's first page has no id bound at all
-- (one the planner could pick the primary key for, to read the whole table).
(SELECT 0 AS stage, t.id, (t.run_id % $3)::integer AS part, t.run_id, t.task_id, t.from_state,
        t.to_state, t.attempt, t.at, t.actor, t.reason, NULL::text AS workflow,
        NULL::text AS uri, NULL::bigint AS event_id, NULL::timestamptz AS logical_date,
        NULL::text AS metadata, NULL::text AS rule, NULL::text AS kind,
        NULL::text AS error, NULL::text AS detail
 FROM transitions t
 WHERE t.txid >= pg_snapshot_xmin($1::text::pg_snapshot)::text::bigint
   AND t.txid < pg_snapshot_xmax($2::text::pg_snapshot)::text::bigint
   AND pg_visible_in_snapshot(t.txid::text::xid8, $2::text::pg_snapshot)
   AND NOT pg_visible_in_snapshot(t.txid::text::xid8, $1::text::pg_snapshot)
   AND t.run_id % $3 = ANY($4::integer[])
   AND $5::integer = 0 AND ($6::bigint = 0 OR t.id > $6::bigint)
 ORDER BY t.id LIMIT $7)
UNION ALL
(SELECT 1, d.id, (coalesce(d.run_id, hashtext(d.uri)::bigint & 2147483647) % $3)::integer,
        d.run_id, d.task_id, NULL, NULL, NULL,
        d.recorded_at, NULL, NULL, d.workflow, d.uri,
        d.event_id, d.logical_date, d.metadata::text,
        NULL, NULL, NULL, NULL
 FROM dataset_events d
 WHERE d.txid >= pg_snapshot_xmin($1::text::pg_snapshot)::text::bigint
   AND d.txid < pg_snapshot_xmax($2::text::pg_snapshot)::text::bigint
   AND pg_visible_in_snapshot(d.txid::text::xid8, $2::text::pg_snapshot)
   AND NOT pg_visible_in_snapshot(d.txid::text::xid8, $1::text::pg_snapshot)
   AND coalesce(d.run_id, hashtext(d.uri)::bigint & 2147483647) % $3 = ANY($4::integer[])
   AND $5::integer <= 1 AND ($5::integer = 0 OR d.id > $6::bigint)
 ORDER BY d.id LIMIT $7)
UNION ALL
(SELECT 2, a.id, (coalesce(a.run_id, hashtext(a.dataset)::bigint & 2147483647) % $3)::integer,
        a.run_id, nullif(a.task_id, ''), NULL, NULL,
        a.attempt,
        a.created_at, NULL, NULL, a.workflow, nullif(a.dataset, ''),
        NULL, NULL, NULL,
        a.rule, a.kind, a.error, a.detail
 FROM alerts a
 WHERE a.txid >= pg_snapshot_xmin($1::text::pg_snapshot)::text::bigint
   AND a.txid < pg_snapshot_xmax($2::text::pg_snapshot)::text::bigint
   AND pg_visible_in_snapshot(a.txid::text::xid8, $2::text::pg_snapshot)
   AND NOT pg_visible_in_snapshot(a.txid::text::xid8, $1::text::pg_snapshot)
   AND coalesce(a.run_id, hashtext(a.dataset)::bigint & 2147483647) % $3 = ANY($4::integer[])
   AND ($5::integer < 2 OR a.id > $6::bigint)
 ORDER BY a.id LIMIT $7)
ORDER BY stage, id LIMIT $7;

-- name: lifecycle_run_workflows
-- $1 run ids: the workflow of each.
SELECT id, workflow FROM runs WHERE id = ANY($1::bigint[]);

-- name: lifecycle_summarize
-- Summarize the BRIN ranges filled since the last call (complete ranges only,
-- so inserts never widen a summary): a window reads every range not yet
-- summarized, and autovacuum alone would leave up to a minute of them.
SELECT brin_summarize_new_values('transitions_by_txid'::regclass)
     + brin_summarize_new_values('dataset_events_by_txid'::regclass)
     + brin_summarize_new_values('alerts_by_txid'::regclass) AS ranges;

-- name: lifecycle_checkpoint
-- $1 partitions, $2 owner, ($3 stage, $4 id) published so far, $5 how many
-- more of each partition, $6 lease seconds: the partitions still held (a
-- missing one was taken over by another relay after its lease ran out).
UPDATE lifecycle_cursors c
SET after_stage = $3, after_id = $4, published = c.published + n.more,
    lease_until = now() + make_interval(secs => $6)
FROM unnest($1::integer[], $5::bigint[]) AS n(part, more)
WHERE c.part = n.part AND c.lease_owner = $2
RETURNING c.part;

-- name: lifecycle_finish
-- $1 partitions, $2 owner, $3 published of each in the last page, $4 seconds
-- until they are looked at again: the window is done, the leases released.
-- Also when every change committed before is published (as far as the other
-- partitions' cursors tell), and how long until a partition no one holds is
-- due (this relay waits as long).
UPDATE lifecycle_cursors c
SET done = c.window_to, done_at = c.window_at, window_to = NULL, window_at = NULL,
    after_stage = 0, after_id = 0, published = c.published + n.more,
    lease_owner = NULL, lease_until = NULL,
    next_at = now() + make_interval(secs => $4)
FROM unnest($1::integer[], $3::bigint[]) AS n(part, more)
WHERE c.part = n.part AND c.lease_owner = $2 AND c.window_to IS NOT NULL
RETURNING c.part,
          least(c.done_at, (SELECT min(o.done_at) FROM lifecycle_cursors o
                              WHERE o.part <> ALL($1::integer[]))) AS published_through,
          greatest(0, extract(epoch FROM least(
              now() + make_interval(secs => $4),
              (SELECT min(o.next_at) FROM lifecycle_cursors o
               WHERE o.part <> ALL($1::integer[])
                 AND (o.lease_until IS NULL OR o.lease_until < now()))) - now()))::float8
              AS due_in_s;

-- name: lifecycle_release
-- $1 partitions, $2 owner: stop without finishing (shutdown, a lease lost);
-- a window stays half published and the next claim goes on from its last
-- checkpoint.
UPDATE lifecycle_cursors SET lease_owner = NULL, lease_until = NULL
WHERE part = ANY($1::integer[]) AND lease_owner = $2;

-- name: lifecycle_horizon
-- Every change committed before `published_through` is published.
SELECT min(done_at) AS published_through, sum(published)::bigint AS published,
       count(*) FILTER (WHERE lease_until >= now()) AS leased
FROM lifecycle_cursors;
