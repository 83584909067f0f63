-- Named queries of the read side (`orchestrator runs`, `orchestrator show`).

-- name: deferred_counts
-- $1 run id[]: how many tasks of each run are deferred (waiting without a slot).
SELECT run_id, count(*) AS deferred
FROM task_instances
WHERE run_id = ANY($1::bigint[]) AND state = 'deferred'
GROUP BY run_id;

-- name: run_id_bounds
-- The oldest and newest run ids kept: what `show` says about an id it cannot find.
SELECT min(id) AS oldest, max(id) AS newest FROM runs;
