-- Named queries of the read side (`orchestrator runs`, `orchestrator show`).

-- name: deferred_counts
-- $1 run id[]: how many tasks of each run are deferred (waiting without a slot).
SELECT run_id, count(*) AS deferred
FROM task_instances
WHERE run_id = ANY($1::bigint[]) AND state = 'deferred'
GROUP BY run_id;

-- name: registered_workflows
-- $1 name (NULL: all): registered workflows, the spec new runs start with, live runs.
SELECT w.name, w.current_version, v.spec::text AS spec, w.updated_at,
       (SELECT count(*) FROM runs r
        WHERE r.workflow = w.name AND r.state IN ('queued', 'running')) AS live_runs
FROM workflows w JOIN workflow_versions v ON v.version = w.current_version
WHERE $1::text IS NULL OR w.name = $1
ORDER BY w.name;

-- name: failed_tasks_of_run
-- $1 run id: the tasks that did not succeed, first failures first.
SELECT task_id, state::text AS state, attempt, error
FROM task_instances
WHERE run_id = $1 AND state IN ('failed', 'dead_lettered', 'upstream_failed')
ORDER BY (state = 'upstream_failed'), ended_at NULLS LAST, id;

-- name: run_id_bounds
-- The oldest and newest run ids kept: what `show` says about an id it cannot find.
SELECT min(id) AS oldest, max(id) AS newest FROM runs;

-- name: task_state_counts
-- How far a run has come: its tasks counted by state.
SELECT state::text AS state, count(*)::int AS n FROM task_instances
WHERE run_id = $1 GROUP BY state ORDER BY state;

-- name: metrics_gauges
-- What /metrics reads at scrape time (cached): work waiting for a slot, waits.
SELECT
    (SELECT count(*) FROM task_instances WHERE state IN ('queued', 'up_for_retry')
        AND (not_before IS NULL OR not_before <= now()))::bigint AS queued,
    (SELECT extract(epoch FROM now() - min(queued_at)) FROM task_instances
        WHERE state = 'queued')::float8 AS oldest_queued_s,
    (SELECT count(*) FROM task_instances WHERE state = 'deferred')::bigint AS deferred;

-- name: workflow_page
-- Registered workflows by name, as `registered_workflows`, filtered and paged:
-- $1 name (NULL: all), $2 names after this one (the cursor), $3 limit (NULL:
-- all), $4 owner, $5 tag, $6 paused or not (NULL: either).
SELECT w.name, w.current_version, v.spec::text AS spec, w.updated_at,
       (SELECT count(*) FROM runs r
        WHERE r.workflow = w.name AND r.state IN ('queued', 'running')) AS live_runs
FROM workflows w JOIN workflow_versions v ON v.version = w.current_version
WHERE ($1::text IS NULL OR w.name = $1)
  AND ($2::text IS NULL OR w.name > $2)
  AND ($4::text IS NULL OR v.spec->>'owner' = $4)
  AND ($5::text IS NULL OR v.spec->'tags' ? $5)
  AND ($6::boolean IS NULL
       OR EXISTS (SELECT 1 FROM workflow_pauses p WHERE p.workflow = w.name) = $6)
ORDER BY w.name
LIMIT $3;
