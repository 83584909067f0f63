-- Named queries of alerting (orchestrator/alerts.py, alert_relay.py, sla.py).

-- name: insert_alerts
-- Raise alerts in the transition's transaction, once per (rule, run, task,
-- kind, dataset, stale spell); each new one gets its first deliveries: every
-- route, or only the first of an escalation chain. $1..$12 and $14, $15 one
-- array per column, $13 the clock's time (NULL: the database's). Returns how
-- many alerts were new.
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                         $6::text[], $7::integer[], $8::text[], $9::text[], $10::text[],
                         $11::boolean[], $12::float8[], $14::text[], $15::timestamptz[])
        AS i(rule, kind, workflow, version, run_id, task_id, attempt, error, detail, routes,
             require_ack, escalate_after_s, dataset, stale_after)
), inserted AS (
    INSERT INTO alerts (rule, kind, workflow, version, run_id, task_id, attempt, error, detail,
                        routes, require_ack, escalate_after_s, dataset, stale_after, created_at)
    SELECT rule, kind, workflow, version, run_id, task_id, attempt, error, detail,
           routes::jsonb, require_ack, escalate_after_s, dataset, stale_after,
           coalesce($13::timestamptz, now())
    FROM input
    ON CONFLICT ON CONSTRAINT alerts_raised_once DO NOTHING
    RETURNING id, routes, require_ack, created_at
), deliveries AS (
    INSERT INTO alert_deliveries (alert_id, route_index, route_key, next_at)
    SELECT i.id, r.n - 1, r.route->>'key', i.created_at
    FROM inserted i, jsonb_array_elements(i.routes) WITH ORDINALITY AS r(route, n)
    WHERE NOT i.require_ack OR r.n = 1
)
SELECT count(*) AS raised FROM inserted;

-- name: previous_run_states
-- For each run ($1 ids, $2 workflows): the final state of the run of the
-- same workflow that ended before it (by id), success or failed; and whether
-- the run itself had failed before (an operator cleared it).
SELECT i.id, (
    SELECT p.state::text FROM runs p
    WHERE p.workflow = i.workflow AND p.id < i.id AND p.state IN ('success', 'failed')
    ORDER BY p.id DESC LIMIT 1
) AS previous,
EXISTS (
    SELECT 1 FROM transitions t
    WHERE t.run_id = i.id AND t.task_id IS NULL AND t.to_state = 'failed'
) AS failed_itself
FROM unnest($1::bigint[], $2::text[]) AS i(id, workflow);

-- name: first_failed_tasks
-- Per run of $1, the task that failed (or was dead-lettered) first.
SELECT DISTINCT ON (run_id) run_id, task_id, attempt, error FROM task_instances
WHERE run_id = ANY($1::bigint[]) AND state IN ('failed', 'dead_lettered')
ORDER BY run_id, ended_at, id;

-- name: claim_alert_deliveries
-- Lease up to $2 due deliveries for relay $1 until $3::timestamptz + $4 s (SKIP LOCKED:
-- relays never send the same one at once; a relay that dies leaves a lease
-- that runs out). Each claim counts as an attempt. Returns what the message
-- needs: the alert, its run, the event that started it and the last $5
-- chunks of the attempt's log.
WITH due AS (
    SELECT id FROM alert_deliveries
    WHERE state = 'pending' AND next_at <= $3::timestamptz
      AND (lease_until IS NULL OR lease_until < $3::timestamptz)
    ORDER BY next_at, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE alert_deliveries d
    SET lease_owner = $1, lease_until = $3::timestamptz + make_interval(secs => $4), attempts = d.attempts + 1
    FROM due WHERE d.id = due.id
    RETURNING d.id, d.alert_id, d.route_index, d.route_key, d.attempts
)
SELECT c.id, c.alert_id, c.route_index, c.route_key, c.attempts,
       a.rule, a.kind, a.workflow, a.version, a.run_id, a.task_id, a.attempt, a.error, a.detail,
       a.dataset, a.stale_after, a.routes->c.route_index->'spec' AS route, a.require_ack, a.created_at,
       r.logical_date, r.state::text AS run_state, r.params,
       e.id AS event_id, e.source AS event_source, e.channel AS event_channel,
       e.dedup_key AS event_key, e.received_at AS event_received_at,
       CASE WHEN octet_length(e.payload::text) <= 8192 THEN e.payload END AS event_payload,
       (SELECT array_agg(l.body ORDER BY l.id) FROM (
            SELECT id, body FROM task_logs t
            WHERE a.attempt IS NOT NULL AND t.run_id = a.run_id AND t.task_id = a.task_id
              AND t.attempt = a.attempt
            ORDER BY id DESC LIMIT $5) l) AS log_chunks
FROM claimed c
JOIN alerts a ON a.id = c.alert_id
LEFT JOIN runs r ON r.id = a.run_id
LEFT JOIN events e ON e.id = r.event_id
ORDER BY c.id;

-- name: take_route_slots
-- Take up to $3 sends of route $1 in the window starting $2, at most $4 per
-- window; returns how many were granted (one statement: the row lock orders
-- relays that take at once).
INSERT INTO alert_route_windows AS w (route_key, window_start, sent, granted)
VALUES ($1::text, $2::timestamptz, LEAST($3::integer, $4::integer), LEAST($3::integer, $4::integer))
ON CONFLICT (route_key, window_start) DO UPDATE
SET sent = LEAST(w.sent + $3::integer, $4::integer),
    granted = LEAST(w.sent + $3::integer, $4::integer) - w.sent
RETURNING granted;

-- name: prune_route_windows
DELETE FROM alert_route_windows WHERE window_start < $1;

-- name: finish_alert_deliveries
-- Record what relay $5 did with its claims: $1 id[], $2 outcome[]
-- (delivered, retry, undelivered, limited), $3 next attempt at[], $4 error[],
-- $6::timestamptz now. A rate-limited claim was no attempt. Guarded by the lease: a relay
-- whose lease ran out records nothing. Alerts waiting for an acknowledgement
-- arm their escalation when a route of the chain got them (or gave up).
WITH input AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::text[])
        AS i(id, outcome, next_at, error)
), updated AS (
    UPDATE alert_deliveries d
    SET state = CASE i.outcome WHEN 'delivered' THEN 'delivered'
                               WHEN 'undelivered' THEN 'undelivered' ELSE 'pending' END,
        next_at = coalesce(i.next_at, d.next_at),
        last_error = CASE WHEN i.outcome = 'limited' THEN d.last_error ELSE i.error END,
        delivered_at = CASE WHEN i.outcome = 'delivered' THEN $6::timestamptz END,
        attempts = CASE WHEN i.outcome = 'limited' THEN d.attempts - 1 ELSE d.attempts END,
        lease_owner = NULL, lease_until = NULL
    FROM input i
    WHERE d.id = i.id AND d.lease_owner = $5 AND d.state = 'pending'
    RETURNING d.id, d.alert_id, d.route_index, d.state
), armed AS (
    UPDATE alerts a
    SET escalate_at = CASE WHEN u.state = 'delivered'
                           THEN $6::timestamptz + make_interval(secs => a.escalate_after_s) ELSE $6::timestamptz END
    FROM updated u
    WHERE a.id = u.alert_id AND u.state <> 'pending' AND a.require_ack AND a.acked_at IS NULL
      AND a.escalated_to = u.route_index AND u.route_index + 1 < jsonb_array_length(a.routes)
)
SELECT id FROM updated;

-- name: escalate_alerts
-- Unacknowledged alerts whose escalation is due move to the next route of
-- their chain (at most $2 at a time; SKIP LOCKED: one relay each).
WITH due AS (
    SELECT id FROM alerts
    WHERE escalate_at <= $1::timestamptz AND acked_at IS NULL
    ORDER BY escalate_at LIMIT $2
    FOR UPDATE SKIP LOCKED
), moved AS (
    UPDATE alerts a SET escalated_to = a.escalated_to + 1, escalate_at = NULL
    FROM due WHERE a.id = due.id
    RETURNING a.id, a.escalated_to, a.routes
)
INSERT INTO alert_deliveries (alert_id, route_index, route_key, next_at)
SELECT id, escalated_to, routes->escalated_to->>'key', $1::timestamptz FROM moved
ON CONFLICT (alert_id, route_index) DO NOTHING
RETURNING alert_id;

-- name: alerts_next_due
-- When the relay has work next: the earliest pending delivery or escalation.
SELECT LEAST(
    (SELECT min(next_at) FROM alert_deliveries WHERE state = 'pending'),
    (SELECT min(escalate_at) FROM alerts WHERE escalate_at IS NOT NULL AND acked_at IS NULL)
) AS due;

-- name: ack_alert
-- An operator acknowledges alert $1 (guarded: once); escalation stops.
UPDATE alerts SET acked_at = coalesce($4::timestamptz, now()), acked_by = $2, ack_reason = $3,
                  escalate_at = NULL
WHERE id = $1 AND acked_at IS NULL
RETURNING id, workflow, run_id, task_id, kind;

-- name: list_alerts
-- Newest first, ids below $1 (0: from the newest); $2 only this workflow,
-- $3 only alerts in this state (pending, delivered, undelivered, unacked), $4 limit.
SELECT a.id, a.rule, a.kind, a.workflow, a.version, a.run_id, a.task_id, a.attempt,
       a.error, a.detail, a.dataset, a.stale_after, a.require_ack, a.escalated_to, a.escalate_at, a.acked_at, a.acked_by,
       a.ack_reason, a.created_at, s.state, s.deliveries
FROM alerts a
CROSS JOIN LATERAL (
    SELECT CASE WHEN bool_or(d.state = 'undelivered') THEN 'undelivered'
                WHEN bool_or(d.state = 'pending') THEN 'pending'
                ELSE 'delivered' END AS state,
           jsonb_agg(jsonb_build_object(
               'route', d.route_key, 'route_index', d.route_index, 'state', d.state,
               'attempts', d.attempts, 'last_error', d.last_error,
               'next_at', d.next_at, 'delivered_at', d.delivered_at) ORDER BY d.route_index)
               AS deliveries
    FROM alert_deliveries d WHERE d.alert_id = a.id
) s
WHERE ($1::bigint = 0 OR a.id < $1::bigint) AND ($2::text IS NULL OR a.workflow = $2)
  AND ($3::text IS NULL OR s.state = $3 OR ($3 = 'unacked' AND a.require_ack AND a.acked_at IS NULL))
ORDER BY a.id DESC
LIMIT $4;

-- name: get_alert_state
SELECT id, acked_at, acked_by FROM alerts WHERE id = $1;

-- name: insert_sla_deadlines
-- $1 run_id[], $2 task_id[] ('' for the run), $3 start[] (NULL: $5, the
-- clock's time, or the database's), $4 seconds[].
INSERT INTO sla_deadlines (run_id, task_id, due_at)
SELECT run_id, task_id,
       coalesce(start, $5::timestamptz, now()) + make_interval(secs => seconds)
FROM unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::float8[])
    AS i(run_id, task_id, start, seconds)
ON CONFLICT (run_id, task_id) DO NOTHING;

-- name: sla_deadlines_due_before
-- Unfired deadlines due before $1, earliest first, at most $2.
SELECT id, due_at FROM sla_deadlines
WHERE fired_at IS NULL AND due_at < $1
ORDER BY due_at LIMIT $2;

-- name: sla_deadlines_new
-- Unfired deadlines added after id $1.
SELECT id, due_at FROM sla_deadlines WHERE id > $1 AND fired_at IS NULL ORDER BY id LIMIT $2;

-- name: sla_last_id
SELECT coalesce(max(id), 0) AS id FROM sla_deadlines;

-- name: fire_sla_deadlines
-- Fire due deadlines once (guarded by fired_at, SKIP LOCKED: triggerers
-- never fire the same one). Returns each with its run and task as they are:
-- whether it was missed is decided from those states.
WITH due AS (
    SELECT id FROM sla_deadlines
    WHERE id = ANY($1::bigint[]) AND fired_at IS NULL AND due_at <= $2
    FOR UPDATE SKIP LOCKED
), fired AS (
    UPDATE sla_deadlines s SET fired_at = $2 FROM due WHERE s.id = due.id
    RETURNING s.id, s.run_id, s.task_id, s.due_at
)
SELECT f.id, f.run_id, f.task_id, f.due_at, r.workflow, r.version, r.state::text AS run_state,
       t.state::text AS task_state, t.attempt
FROM fired f
JOIN runs r ON r.id = f.run_id
LEFT JOIN task_instances t ON t.run_id = f.run_id AND t.task_id = f.task_id;
