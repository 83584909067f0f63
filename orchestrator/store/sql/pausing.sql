-- Named queries of pausing workflows (see orchestrator/pausing.py).

-- name: paused_among
-- $1 names; takes the shared pause locks (see migration 0010)
SELECT workflow, version FROM orchestrator_paused($1::text[]);

-- name: lock_pause
-- $1 workflow: the exclusive pause lock, held to commit
SELECT pg_advisory_xact_lock(1346459989, hashtext($1));

-- name: insert_pause
-- $1 workflow, $2 actor, $3 reason, $4 hold running
INSERT INTO workflow_pauses (workflow, actor, reason, hold_running)
VALUES ($1, $2, $3, $4)
ON CONFLICT (workflow) DO NOTHING
RETURNING workflow;

-- name: delete_pause
DELETE FROM workflow_pauses WHERE workflow = $1 RETURNING hold_running;

-- name: pauses
-- $1 names (NULL: every paused workflow)
SELECT workflow, paused_at, actor, reason, hold_running
FROM workflow_pauses
WHERE $1::text[] IS NULL OR workflow = ANY($1::text[])
ORDER BY workflow;

-- name: insert_held_events
-- $1 workflow[], $2 event id[], $3 trigger key[], $4 policy[], $5 state[],
-- $6 params json[], $7 logical date[], $8 interval end[], $9 reason[]
INSERT INTO held_events (workflow, event_id, trigger_key, policy, state, params,
                         logical_date, interval_end, reason)
SELECT workflow, event_id, trigger_key, policy, state, params::jsonb, logical_date,
       interval_end, reason
FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::timestamptz[], $8::timestamptz[], $9::text[])
    AS i(workflow, event_id, trigger_key, policy, state, params, logical_date, interval_end,
         reason);

-- name: buffered_events
-- A paused workflow's buffered events in arrival order.
SELECT id, event_id, trigger_key, policy, params::text AS params, logical_date, interval_end
FROM held_events
WHERE workflow = $1 AND state = 'buffered'
ORDER BY id;

-- name: coalesced_events
-- $1 event ids: what coalescing renders trigger params from again.
SELECT id, source, channel, dedup_key, payload::text AS payload, headers::text AS headers,
       meta::text AS meta
FROM events WHERE id = ANY($1::bigint[]);

-- name: release_held
-- $1 held id[], $2 state[], $3 run id[]
UPDATE held_events h
SET state = r.state, run_id = r.run_id, released_at = now()
FROM unnest($1::bigint[], $2::text[], $3::bigint[]) AS r(id, state, run_id)
WHERE h.id = r.id AND h.state = 'buffered';

-- name: held_counts
-- Per workflow ($1 names, NULL: all) and state, how many held events.
SELECT workflow, state, count(*) AS n
FROM held_events
WHERE ($1::text[] IS NULL OR workflow = ANY($1::text[]))
  AND state IN ('buffered', 'dropped')
GROUP BY workflow, state;

-- name: current_versions_one
SELECT current_version FROM workflows WHERE name = $1;

-- name: last_runs
-- $1 names: each workflow's newest run (id and state).
SELECT w.name AS workflow, r.id, r.state::text AS state
FROM unnest($1::text[]) AS w(name)
CROSS JOIN LATERAL (
    SELECT id, state FROM runs WHERE workflow = w.name ORDER BY id DESC LIMIT 1
) r;

-- name: held_events_of
-- $1 workflow, $2 state (NULL: any), $3 limit; newest first
SELECT h.id, h.event_id, h.trigger_key, h.policy, h.state, h.reason, h.run_id, h.held_at,
       h.released_at, e.source, e.channel
FROM held_events h JOIN events e ON e.id = h.event_id
WHERE h.workflow = $1 AND ($2::text IS NULL OR h.state = $2)
ORDER BY h.id DESC
LIMIT $3;
