-- Named queries of the cron scheduler and backfill.

-- name: scheduler_try_lead
-- Session-level: held until the leader's dedicated connection ends.
SELECT pg_try_advisory_lock($1::bigint);

-- name: scheduler_alive
SELECT 1;

-- name: schedule_states
-- $1 workflow[], $2 trigger_key[]
SELECT s.workflow, s.trigger_key, s.done_until
FROM schedules s
JOIN unnest($1::text[], $2::text[]) AS k (workflow, trigger_key)
    USING (workflow, trigger_key);

-- name: schedule_first_seen
-- $1 workflow[], $2 trigger_key[], $3 cron[], $4 timezone[], $5 done_until[]
INSERT INTO schedules (workflow, trigger_key, cron, timezone, done_until)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])
ON CONFLICT (workflow, trigger_key) DO NOTHING;

-- name: schedule_advance
-- Guarded by the expected watermark: a scheduler that lost its leadership
-- (and its view of the row) changes nothing, and its transaction is undone.
UPDATE schedules
SET done_until = $4, last_logical_date = coalesce($5, last_logical_date), updated_at = now()
WHERE workflow = $1 AND trigger_key = $2 AND done_until = $3
RETURNING 1;

-- name: runs_at_logical_dates
-- $1 workflow, $2 logical_date[]: which of these dates already have a run.
SELECT id, logical_date, state::text AS state
FROM runs WHERE workflow = $1 AND logical_date = ANY($2::timestamptz[]);

-- name: logical_dates_taken
-- $1 workflow[], $2 logical_date[], $3 dedup_key[]: the positions (from 1) of
-- the (workflow, logical date) pairs that already have a run which no event
-- with that key started (a manual run, another schedule trigger, a pruned event),
-- or whose run retention has deleted (see logical_dates_pruned).
SELECT i.n
FROM unnest($1::text[], $2::timestamptz[], $3::text[])
    WITH ORDINALITY AS i(workflow, logical_date, dedup_key, n)
JOIN runs r ON r.workflow = i.workflow AND r.logical_date = i.logical_date
LEFT JOIN events e ON e.id = r.event_id
WHERE e.dedup_key IS DISTINCT FROM i.dedup_key
UNION
-- A date whose run retention has deleted was processed: it does not run again.
SELECT i.n
FROM unnest($1::text[], $2::timestamptz[])
    WITH ORDINALITY AS i(workflow, logical_date, n)
JOIN logical_dates_pruned p ON p.workflow = i.workflow AND p.logical_date = i.logical_date;
