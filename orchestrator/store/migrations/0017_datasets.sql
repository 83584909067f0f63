-- Datasets: updates recorded in the commit of a producing task's success (or
-- reported from outside), the events that started dataset-triggered runs, and
-- what each `all` trigger has seen since its last run (orchestrator/datasets.py).

-- One row per dataset ever updated: the newest update, for listings and freshness.
CREATE TABLE datasets (
    uri              text PRIMARY KEY,
    last_event_id    bigint NOT NULL,
    last_updated_at  timestamptz NOT NULL,
    updates          bigint NOT NULL DEFAULT 1
);

-- Every update: the intake event it is (source 'dataset'), who made it, for
-- which logical date, and what the producer said about it (a row count).
CREATE TABLE dataset_events (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id      bigint NOT NULL UNIQUE REFERENCES events (id) ON DELETE CASCADE,
    uri           text NOT NULL,
    workflow      text,
    run_id        bigint,
    task_id       text,
    logical_date  timestamptz,
    metadata      jsonb NOT NULL DEFAULT '{}'::jsonb,
    recorded_at   timestamptz NOT NULL
);
CREATE INDEX dataset_events_by_uri ON dataset_events (uri, id);
CREATE INDEX dataset_events_by_date ON dataset_events (uri, logical_date)
    WHERE logical_date IS NOT NULL;
CREATE INDEX dataset_events_by_run ON dataset_events (run_id) WHERE run_id IS NOT NULL;

-- The updates behind each event that starts a dataset-triggered run (the run
-- names that event: runs.event_id), so a run shows what caused it and an
-- update shows the runs it caused.
CREATE TABLE dataset_event_uses (
    dataset_event_id  bigint NOT NULL REFERENCES dataset_events (id) ON DELETE CASCADE,
    trigger_event_id  bigint NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    PRIMARY KEY (dataset_event_id, trigger_event_id)
);
CREATE INDEX dataset_event_uses_by_trigger ON dataset_event_uses (trigger_event_id);

-- `all` triggers: the updates seen since the trigger last started a run, per
-- partition (-infinity when it does not match partitions) and per URI of its
-- list (slot). Deleted when they start a run.
CREATE TABLE dataset_pending (
    workflow          text NOT NULL,
    trigger_key       text NOT NULL,
    partition_date    timestamptz NOT NULL,
    slot              integer NOT NULL,
    dataset_event_id  bigint NOT NULL REFERENCES dataset_events (id) ON DELETE CASCADE,
    PRIMARY KEY (workflow, trigger_key, partition_date, slot, dataset_event_id)
);
