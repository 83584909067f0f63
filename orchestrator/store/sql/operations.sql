-- Named queries of operator actions (orchestrator/operations.py): clear, mark,
-- cancel and task holds. Every move is guarded by the source state the
-- operation decided from and logged in transitions with its actor and reason.

-- name: operator_moves
-- $1 run id[], $2 task_id[], $3 source[], $4 target[], $5 output json text[]
-- (for targets success), $6 actor, $7 reason. A task moved back to scheduled
-- loses its lease, error and output (its earlier attempts and their errors
-- stay in transitions); a task marked success gets the given output.
WITH input AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::task_state[], $4::task_state[], $5::text[])
        AS i(run_id, task_id, source, target, output)
), updated AS (
    UPDATE task_instances t
    SET state = i.target,
        output = CASE WHEN i.target = 'success' THEN i.output::jsonb
                      WHEN i.target = 'scheduled' THEN NULL ELSE t.output END,
        error = CASE WHEN i.target IN ('scheduled', 'success', 'skipped') THEN NULL
                     ELSE coalesce(t.error, $7) END,
        lease_owner = NULL, lease_until = NULL, not_before = NULL, resume_payload = NULL,
        tries_before = CASE WHEN i.target = 'scheduled' THEN t.attempt ELSE t.tries_before END,
        queued_at = CASE WHEN i.target = 'scheduled' THEN NULL ELSE t.queued_at END,
        ended_at = CASE WHEN i.target = 'scheduled' THEN NULL ELSE now() END
    FROM input i JOIN task_instances o ON o.run_id = i.run_id AND o.task_id = i.task_id
    WHERE t.id = o.id AND t.state = i.source
    RETURNING t.run_id, t.task_id, t.attempt, i.source, t.state, o.error AS old_error
), logged AS (
    -- The error a cleared or marked task had stays in its history.
    INSERT INTO transitions (run_id, task_id, from_state, to_state, attempt, actor, reason)
    SELECT run_id, task_id, source::text, state::text, attempt, $6,
           $7 || coalesce(' (its error was: ' || left(old_error, 2000) || ')', '')
    FROM updated
)
SELECT count(*) AS moved FROM updated;

-- name: record_audits
-- One audit entry per run of a batch action: $1 actor, $2 action, $3 workflow[],
-- $4 run id[], $5 reason, $6 detail json[]
INSERT INTO audit (actor, action, workflow, run_id, reason, detail)
SELECT $1, $2, i.workflow, i.run_id, $5, i.detail::jsonb
FROM unnest($3::text[], $4::bigint[], $6::text[]) AS i(workflow, run_id, detail);

-- name: reopen_runs
-- $1 run id[], $2 expected sources (operator edges to $5), $3 actor, $4 reason,
-- $5 'running', or 'queued' when max_active_runs leaves no room
WITH old AS (
    SELECT id, state FROM runs
    WHERE id = ANY($1::bigint[]) AND state = ANY($2::run_state[]) FOR UPDATE
), updated AS (
    UPDATE runs r SET state = $5::text::run_state, ended_at = NULL,
                      started_at = coalesce(started_at, now())
    FROM old WHERE r.id = old.id
    RETURNING r.id, old.state AS source
), logged AS (
    INSERT INTO transitions (run_id, task_id, from_state, to_state, actor, reason)
    SELECT id, NULL, source::text, $5::text, $3, $4 FROM updated
)
SELECT id FROM updated;

-- name: cancel_tasks
-- Every unfinished task of run $1 (states $2) ends skipped, in one statement:
-- rows are locked as they are found, so a claim racing this cannot slip a
-- task out of the set. Running attempts lose their lease: their worker sees
-- it at its next heartbeat and cancels the handler; a late result matches
-- nothing. $3 actor, $4 reason.
WITH picked AS (
    SELECT id, state FROM task_instances
    WHERE run_id = $1 AND state = ANY($2::task_state[])
    FOR UPDATE
), updated AS (
    UPDATE task_instances t
    SET state = 'skipped', lease_owner = NULL, lease_until = NULL, not_before = NULL,
        ended_at = now()
    FROM picked p WHERE t.id = p.id
    RETURNING t.run_id, t.task_id, t.attempt, p.state AS source
), logged AS (
    INSERT INTO transitions (run_id, task_id, from_state, to_state, attempt, actor, reason)
    SELECT run_id, task_id, source::text, 'skipped', attempt, $3, $4 FROM updated
)
SELECT task_id, source::text AS source FROM updated;

-- name: end_run_waits
-- The waits of run $1 (or only of tasks $2, when given) end without an
-- outcome for their task: a later matching event or timer finds nothing.
UPDATE deferrals SET state = 'resolved', outcome = $3, resolved_by = $4, resolved_at = now()
WHERE run_id = $1 AND state = 'waiting' AND ($2::text[] IS NULL OR task_id = ANY($2::text[]))
RETURNING id;

-- name: cancel_run
-- $1 run id, $2 expected sources, $3 actor, $4 reason
WITH old AS (
    SELECT id, state FROM runs WHERE id = $1 AND state = ANY($2::run_state[]) FOR UPDATE
), updated AS (
    UPDATE runs r SET state = 'cancelled', ended_at = now()
    FROM old WHERE r.id = old.id
    RETURNING r.id, r.workflow, r.logical_date, old.state AS source
), logged AS (
    INSERT INTO transitions (run_id, task_id, from_state, to_state, actor, reason)
    SELECT id, NULL, source::text, 'cancelled', $3, $4 FROM updated
)
SELECT id, workflow, logical_date FROM updated;

-- name: cancelled_attempts
-- The heartbeat's other half: of the attempts a worker runs ($2 id[], $3
-- attempt[]), those whose row is no longer running under its lease $1
-- (cancelled with their run, or taken back): the worker stops them.
SELECT a.id FROM unnest($2::bigint[], $3::integer[]) AS a(id, attempt)
WHERE NOT EXISTS (
    SELECT 1 FROM task_instances t
    WHERE t.id = a.id AND t.attempt = a.attempt AND t.state = 'running' AND t.lease_owner = $1
);

-- name: add_hold
INSERT INTO task_holds (workflow, task, actor, reason) VALUES ($1, $2, $3, $4)
ON CONFLICT DO NOTHING RETURNING workflow;

-- name: remove_hold
DELETE FROM task_holds WHERE workflow = $1 AND task = $2 RETURNING workflow;

-- name: lock_live_runs
-- Holds are decided under the runs' locks: a commit deciding successors of a
-- run holds its lock, so a hold added or removed waits for it, then sees it.
SELECT id FROM runs WHERE workflow = $1 AND state IN ('queued', 'running') ORDER BY id FOR UPDATE;

-- name: move_held
-- Hold ($4 = 'held') or release ($4 = 'queued') the instances of task $2
-- ('*': every task) in the live runs of workflow $1 that are in a state of
-- $3, unless another hold still covers them. $5 actor, $6 reason. A held
-- retry keeps its not_before: released, it still waits out its delay.
WITH picked AS (
    SELECT t.id, t.state AS source FROM task_instances t JOIN runs r ON r.id = t.run_id
    WHERE r.workflow = $1 AND r.state = 'running'
      AND t.state = ANY($3::task_state[]) AND ($2::text = '*' OR t.task_id = $2::text)
      AND ($4::text = 'held') = EXISTS (
          SELECT 1 FROM task_holds h WHERE h.workflow = $1 AND h.task IN (t.task_id, '*'))
    FOR UPDATE OF t
), updated AS (
    UPDATE task_instances t
    SET state = $4::text::task_state,
        queued_at = CASE WHEN $4::text = 'queued' THEN now() ELSE t.queued_at END
    FROM picked p WHERE t.id = p.id
    RETURNING t.run_id, t.task_id, t.attempt, p.source
), logged AS (
    INSERT INTO transitions (run_id, task_id, from_state, to_state, attempt, actor, reason)
    SELECT run_id, task_id, source::text, $4::text, attempt, $5, $6 FROM updated
)
SELECT count(*) AS moved FROM updated;

-- name: holds_of_workflow
SELECT task, actor, reason, at FROM task_holds WHERE workflow = $1 ORDER BY task;
