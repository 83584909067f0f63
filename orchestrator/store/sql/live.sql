-- The live view (orchestrator.ui.live): what watched runs look like now, read
-- once per refresh for every watcher, never once per watcher.

-- name: live_task_states
-- $1 run ids: each task instance's state, attempt and times.
SELECT run_id, task_id, state::text AS state, attempt, started_at, ended_at, not_before,
       error, pool
FROM task_instances WHERE run_id = ANY($1::bigint[])
ORDER BY run_id, id;

-- name: live_run_states
SELECT id, workflow, state::text AS state, started_at, ended_at
FROM runs WHERE id = ANY($1::bigint[]);

-- name: live_transitions
-- $1 run ids; for each, $2 the newest transition id sent, $3 a floor below it
-- and $4 how many of its transitions in (floor, newest] were sent. Returns
-- the transitions above newest; and above floor when the count there differs
-- (a transaction committed after one holding higher ids: its ids were drawn
-- before commit), so the caller rereads that margin only then.
SELECT t.id, t.run_id, t.task_id, t.from_state, t.to_state, t.attempt, t.at, t.actor, t.reason
FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[])
    AS w(run_id, newest, floor, sent)
CROSS JOIN LATERAL (
    SELECT CASE WHEN count(*) = w.sent THEN w.newest ELSE w.floor END AS low
    FROM transitions WHERE run_id = w.run_id AND id > w.floor AND id <= w.newest
) m
CROSS JOIN LATERAL (
    SELECT * FROM transitions WHERE run_id = w.run_id AND id > m.low ORDER BY id
) t
ORDER BY t.id;

-- name: recent_runs_per_workflow
-- $1 names, $2 per workflow: each workflow's newest runs, newest first.
SELECT w.name AS workflow, r.id, r.state::text AS state
FROM unnest($1::text[]) AS w(name)
CROSS JOIN LATERAL (
    SELECT id, state FROM runs WHERE workflow = w.name ORDER BY id DESC LIMIT $2
) r
ORDER BY w.name, r.id DESC;

-- name: workflow_versions_with_runs
-- $1 workflow: its versions, newest first, with how many runs pinned each, by state.
SELECT v.version, v.created_at, (w.current_version = v.version) AS current,
       COALESCE(
           (SELECT jsonb_object_agg(s.state, s.n)
            FROM (SELECT state::text AS state, count(*) AS n FROM runs
                  WHERE workflow = $1 AND version = v.version GROUP BY state) s),
           '{}'::jsonb
       )::text AS runs
FROM workflow_versions v JOIN workflows w ON w.name = v.workflow
WHERE v.workflow = $1
ORDER BY v.created_at DESC, v.version;

-- name: version_spec
-- $1 workflow, $2 version.
SELECT spec::text AS spec FROM workflow_versions WHERE workflow = $1 AND version = $2;
