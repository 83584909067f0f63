-- Named queries of datasets (orchestrator/datasets.py, lineage.py).

-- name: outlet_tasks
-- $1 run_ids, $2 task_ids: what rendering the outlets of tasks that just
-- succeeded needs (their attempt and output, their run's params and dates).
SELECT t.run_id, t.task_id, t.attempt, t.output::text AS output, r.workflow, r.version,
       r.params::text AS params,
       r.logical_date, r.interval_end
FROM unnest($1::bigint[], $2::text[]) AS s(run_id, task_id)
JOIN task_instances t ON t.run_id = s.run_id AND t.task_id = s.task_id
JOIN runs r ON r.id = t.run_id;

-- name: insert_dataset_events
-- One row per new update; the dataset's newest update moves forward.
WITH added AS (
    INSERT INTO dataset_events (event_id, uri, workflow, run_id, task_id, logical_date,
                                metadata, recorded_at)
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::text[],
                         $6::timestamptz[], $7::jsonb[],
                         array_fill(coalesce($8::timestamptz, now()),
                                    ARRAY[cardinality($1::bigint[])]))
    RETURNING id, event_id, uri, recorded_at
), newest AS (
    INSERT INTO datasets AS d (uri, last_event_id, last_updated_at, updates)
    SELECT uri, max(id), max(recorded_at), count(*) FROM added GROUP BY uri
    ON CONFLICT (uri) DO UPDATE
        SET last_event_id = greatest(d.last_event_id, excluded.last_event_id),
            last_updated_at = greatest(d.last_updated_at, excluded.last_updated_at),
            updates = d.updates + excluded.updates
)
SELECT id, event_id FROM added;

-- name: dataset_trigger_workflows
-- Current versions whose triggers include a dataset trigger.
SELECT w.name, w.current_version
FROM workflows w JOIN workflow_versions v ON v.version = w.current_version
WHERE v.spec -> 'triggers' @> '[{"source": "dataset"}]'::jsonb
ORDER BY w.name;

-- name: add_pending_updates
-- $1 workflow, $2 trigger key, $3 partition, $4 slots, $5 dataset event ids;
-- then the updates an `all` trigger holds for that partition (the caller holds
-- its lock).
WITH added AS (
    INSERT INTO dataset_pending (workflow, trigger_key, partition_date, slot, dataset_event_id)
    SELECT $1, $2, $3, s, e FROM unnest($4::integer[], $5::bigint[]) AS u(s, e)
    ON CONFLICT DO NOTHING
)
SELECT slot, dataset_event_id FROM dataset_pending
WHERE workflow = $1 AND trigger_key = $2 AND partition_date = $3
UNION
SELECT s, e FROM unnest($4::integer[], $5::bigint[]) AS u(s, e);

-- name: dataset_events_by_id
SELECT id, uri, workflow, run_id, task_id, logical_date, metadata::text AS metadata, recorded_at
FROM dataset_events WHERE id = ANY($1::bigint[]) ORDER BY id;

-- name: take_pending_updates
-- The updates that start an `all` trigger's run are spent.
DELETE FROM dataset_pending
WHERE workflow = $1 AND trigger_key = $2 AND partition_date = $3;

-- name: insert_dataset_event_uses
INSERT INTO dataset_event_uses (dataset_event_id, trigger_event_id)
SELECT * FROM unnest($1::bigint[], $2::bigint[])
ON CONFLICT DO NOTHING;

-- name: dataset_dates_taken
-- $1 workflow[], $2 logical_date[], $3 dedup_key[]: positions (from 1) of the
-- (workflow, logical date) pairs that already have a run no event with that
-- key started, or whose run retention deleted.
SELECT i.n
FROM unnest($1::text[], $2::timestamptz[], $3::text[])
    WITH ORDINALITY AS i(workflow, logical_date, dedup_key, n)
JOIN runs r ON r.workflow = i.workflow AND r.logical_date = i.logical_date
LEFT JOIN events e ON e.id = r.event_id
WHERE e.dedup_key IS DISTINCT FROM i.dedup_key
UNION
SELECT i.n
FROM unnest($1::text[], $2::timestamptz[]) WITH ORDINALITY AS i(workflow, logical_date, n)
JOIN logical_dates_pruned p ON p.workflow = i.workflow AND p.logical_date = i.logical_date;

-- name: run_dataset_causes
-- The updates that caused a run (through the event that started it).
SELECT d.id, d.uri, d.workflow, d.run_id, d.task_id, d.logical_date, d.metadata::text AS metadata,
       d.recorded_at
FROM runs r
JOIN dataset_event_uses u ON u.trigger_event_id = r.event_id
JOIN dataset_events d ON d.id = u.dataset_event_id
WHERE r.id = $1
ORDER BY d.id;

-- name: run_dataset_updates
-- The updates a run's tasks made.
SELECT id, uri, workflow, run_id, task_id, logical_date, metadata::text AS metadata, recorded_at
FROM dataset_events WHERE run_id = $1 ORDER BY id;

-- name: consumers_of_update
-- Which runs consumed the updates of dataset $1 (of logical date $2, when
-- given): one query, through the events that started them.
SELECT d.id AS dataset_event_id, d.logical_date, r.id AS run_id, r.workflow, r.state::text AS state
FROM dataset_events d
JOIN dataset_event_uses u ON u.dataset_event_id = d.id
JOIN runs r ON r.event_id = u.trigger_event_id
WHERE d.uri = $1 AND ($2::timestamptz IS NULL OR d.logical_date = $2)
ORDER BY d.id, r.id;

-- name: datasets_last_updates
SELECT uri, last_event_id, last_updated_at, updates FROM datasets WHERE uri = ANY($1::text[]);

-- name: all_datasets_last_updates
SELECT uri, last_event_id, last_updated_at, updates FROM datasets ORDER BY uri;

-- name: current_specs
-- Every workflow's current version (the lineage graph is built from them).
SELECT name, current_version FROM workflows ORDER BY name;

-- name: add_update_runs
-- $1 event ids, $2 run id lists (text '{1,2}'): an update's event names the
-- runs it started, so a repeated report of it is answered with them.
UPDATE events e SET run_ids = e.run_ids || u.runs::bigint[]
FROM unnest($1::bigint[], $2::text[]) AS u(id, runs)
WHERE e.id = u.id;

-- name: dataset_known
SELECT EXISTS (SELECT 1 FROM datasets WHERE uri = $1);

-- name: workflows_fingerprint
-- Changes whenever a workflow is added or gets another current version: the
-- lineage graph is built again only then.
SELECT count(*) || ':' || coalesce(sum(hashtextextended(name || ':' || current_version, 0)::numeric), 0)
FROM workflows;
