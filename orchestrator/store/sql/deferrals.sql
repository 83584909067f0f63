-- Named queries of deferrals: recording waits, matching events, resolving.

-- name: insert_deferrals
-- $1 task_instance_id[], $2 run_id[], $3 task_id[], $4 attempt[], $5 kind[],
-- $6 match_key[], $7 match_pattern[], $8 since[] (NULL: the run's creation),
-- $9 config json[], $10 description[], $11 wake_at[], $12 timeout_s[],
-- $13 on_timeout[], $14 resume[], $15 the clock's time (NULL: the database's)
INSERT INTO deferrals (task_instance_id, run_id, task_id, attempt, kind, match_key,
                       match_pattern, since, config, description, wake_at, timeout_at,
                       on_timeout, resume)
SELECT i.ti, i.run_id, i.task_id, i.attempt, i.kind, i.match_key, i.match_pattern,
       coalesce(i.since, r.created_at), i.config::jsonb, i.description, i.wake_at,
       CASE WHEN i.timeout_s IS NULL THEN NULL
            ELSE coalesce($15::timestamptz, now()) + make_interval(secs => i.timeout_s) END,
       i.on_timeout, i.resume
FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::integer[], $5::text[], $6::text[],
            $7::text[], $8::timestamptz[], $9::text[], $10::text[], $11::timestamptz[],
            $12::float8[], $13::text[], $14::text[])
    AS i(ti, run_id, task_id, attempt, kind, match_key, match_pattern, since, config,
         description, wake_at, timeout_s, on_timeout, resume)
JOIN runs r ON r.id = i.run_id
RETURNING id, match_key, match_pattern, since;

-- name: lock_keys
-- Recording a wait and recording its event both take the key's lock before
-- looking for the other side, so neither can miss the other.
SELECT pg_advisory_xact_lock(hashtextextended(k, 0))
FROM (SELECT DISTINCT unnest($1::text[]) AS k ORDER BY 1) keys;

-- name: events_for_keys
-- Events already recorded for waits that are just starting: $1 deferral id[],
-- $2 key[], $3 since[] (as insert_deferrals returned them; the waits are new,
-- so deferrals itself need not be read).
SELECT w.deferral_id, e.id AS event_id, e.payload::text AS payload, e.meta::text AS meta
FROM unnest($1::bigint[], $2::text[], $3::timestamptz[]) AS w(deferral_id, key, since)
CROSS JOIN LATERAL (
    SELECT k.event_id FROM event_keys k
    WHERE k.key = w.key AND k.received_at >= w.since
    ORDER BY k.event_id LIMIT 1
) k
JOIN events e ON e.id = k.event_id;

-- name: events_for_patterns
SELECT DISTINCT ON (d.id) d.id AS deferral_id, e.id AS event_id, e.payload::text AS payload,
       e.meta::text AS meta
FROM deferrals d
JOIN events e ON e.source = 'file' AND e.channel ~ d.match_pattern
                 AND e.received_at >= d.since
WHERE d.id = ANY($1::bigint[]) AND d.state = 'waiting'
ORDER BY d.id, e.id;

-- name: record_event_keys
-- $1 key[], $2 event id[] (the event of each key, in batch order): the keys
-- of new events, kept for waits yet to start, and the waits waiting on them
-- now with their runs and the events that end them (in batch order; taken
-- after the keys' locks, so a wait recorded meanwhile is seen). One index
-- lookup per key (OFFSET 0 keeps the lookup apart): a plan short of
-- statistics cannot read every waiting deferral instead.
WITH recorded AS (
    INSERT INTO event_keys (key, event_id)
    SELECT * FROM unnest($1::text[], $2::bigint[])
    ON CONFLICT DO NOTHING
)
SELECT d.id, d.run_id, k.event_id
FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS k(key, event_id, n)
CROSS JOIN LATERAL (
    SELECT id, run_id FROM deferrals
    WHERE state = 'waiting' AND match_key = k.key
    OFFSET 0
) d
ORDER BY k.n;

-- name: waiting_for_keys
SELECT id, match_key FROM deferrals
WHERE state = 'waiting' AND match_key = ANY($1::text[]);

-- name: waiting_for_paths
-- $1 relative path[], $2 event id[]: file waits whose glob matches a new file.
SELECT DISTINCT ON (d.id) d.id, d.run_id, p.event_id
FROM deferrals d
JOIN unnest($1::text[], $2::bigint[]) AS p(path, event_id) ON p.path ~ d.match_pattern
WHERE d.state = 'waiting' AND d.match_pattern IS NOT NULL
ORDER BY d.id, p.event_id;

-- name: deferral_runs
SELECT DISTINCT run_id FROM deferrals WHERE id = ANY($1::bigint[]);

-- name: resolve_deferrals
-- $1 id[], $2 outcome[], $3 event_id[], $4 actor. Guarded: a wait ends once.
WITH input AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[]) AS i(id, outcome, event_id)
)
UPDATE deferrals d
SET state = 'resolved', outcome = i.outcome, event_id = i.event_id, resolved_by = $4,
    resolved_at = now()
FROM input i
WHERE d.id = i.id AND d.state = 'waiting'
RETURNING d.id, d.task_instance_id, d.run_id, d.task_id, d.attempt, d.resume;

-- name: end_deferred_tasks
-- $1 the moves as one JSON array of [task_instance_id, attempt, target,
-- output, error, resume payload, reason] (output and resume payload as JSON
-- values, null for none): one document costs the driver one encoding, where
-- seven column arrays cost it a check per element. $2 actor
WITH input AS (
    SELECT (m->>0)::bigint AS id, (m->>1)::integer AS attempt,
           (m->>2)::task_state AS target, nullif(m->3, 'null') AS output,
           m->>4 AS error, nullif(m->5, 'null') AS resume_payload, m->>6 AS reason
    FROM jsonb_array_elements($1::jsonb) AS m
), updated AS (
    UPDATE task_instances t
    -- A resumed handler of a task an operator holds waits held; the caller
    -- holds the run's lock, so a hold added meanwhile is seen.
    SET state = CASE WHEN i.target = 'queued' AND EXISTS (
                    SELECT 1 FROM task_holds h JOIN runs hr ON hr.workflow = h.workflow
                    WHERE hr.id = t.run_id AND h.task IN (t.task_id, '*'))
                THEN 'held'::task_state ELSE i.target END,
        output = coalesce(i.output, t.output), error = i.error,
        resume_payload = i.resume_payload,
        queued_at = CASE WHEN i.target = 'queued' THEN now() ELSE t.queued_at END,
        ended_at = CASE WHEN i.target = 'queued' THEN NULL ELSE now() END
    FROM input i
    WHERE t.id = i.id AND t.state = 'deferred' AND t.attempt = i.attempt
    RETURNING t.run_id, t.task_id, t.attempt, t.state, i.reason
), logged AS (
    INSERT INTO transitions (run_id, task_id, from_state, to_state, attempt, actor, reason)
    SELECT run_id, task_id, 'deferred', state::text, attempt, $2, reason FROM updated
)
SELECT run_id, task_id, state::text AS state FROM updated;

-- name: run_task_states
-- One index lookup per run (OFFSET 0 keeps each apart): short of statistics
-- (a burst of new runs, analysed later) the planner reads every task of
-- every run for a = ANY of a thousand ids.
SELECT t.run_id, t.task_id, t.state::text AS state
FROM unnest($1::bigint[]) AS r(id)
CROSS JOIN LATERAL (
    SELECT run_id, task_id, state FROM task_instances WHERE run_id = r.id OFFSET 0
) t;

-- name: deferrals_of_run
-- A callback's URL holds its token: a column of its own while the wait is open
-- (`show` prints it; the API leaves it out), never copied into descriptions or
-- transitions.
SELECT id, task_id, attempt, kind, state, description,
       CASE WHEN kind = 'callback' AND state = 'waiting' THEN config->>'url' END
           AS callback_url,
       wake_at, timeout_at, on_timeout,
       outcome, resolved_by, created_at, resolved_at
FROM deferrals WHERE run_id = $1 ORDER BY id;

-- name: runs_for_waits
-- Run waits that are just starting: has the awaited run already ended so?
-- Same logical date, or (no date in the wait) the workflow's latest run.
SELECT d.id AS deferral_id, r.id AS run_id
FROM deferrals d
JOIN LATERAL (
    SELECT id, state FROM runs r
    WHERE r.workflow = d.config->>'workflow' AND r.id <> d.run_id
      AND (d.config->>'logical_date' IS NULL
           OR r.logical_date = (d.config->>'logical_date')::timestamptz)
    ORDER BY r.id DESC LIMIT 1
) r ON r.state::text = d.config->>'state'
WHERE d.id = ANY($1::bigint[]) AND d.state = 'waiting' AND d.kind = 'run';
