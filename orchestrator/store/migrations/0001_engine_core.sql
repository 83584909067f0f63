-- Engine core: workflow versions, runs, task instances, the transition log, pools.
-- State names mirror orchestrator/states.py; legal moves are enforced by guarded
-- updates whose expected source states come from that module.

CREATE TYPE task_state AS ENUM (
    'scheduled', 'queued', 'running', 'deferred', 'up_for_retry',
    'success', 'failed', 'skipped', 'upstream_failed', 'dead_lettered'
);

CREATE TYPE run_state AS ENUM ('queued', 'running', 'success', 'failed', 'cancelled');

-- Immutable: a version is the content hash of the spec it holds.
CREATE TABLE workflow_versions (
    version     text PRIMARY KEY,
    workflow    text NOT NULL,
    spec        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX workflow_versions_by_workflow ON workflow_versions (workflow, created_at DESC);

-- The version new runs of a workflow start with.
CREATE TABLE workflows (
    name             text PRIMARY KEY,
    current_version  text NOT NULL REFERENCES workflow_versions (version),
    max_active_runs  integer CHECK (max_active_runs IS NULL OR max_active_runs >= 1),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE pools (
    name   text PRIMARY KEY,
    slots  integer NOT NULL CHECK (slots >= 1)
);

CREATE TABLE runs (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow      text NOT NULL,
    version       text NOT NULL REFERENCES workflow_versions (version),
    state         run_state NOT NULL,
    params        jsonb NOT NULL DEFAULT '{}'::jsonb,
    logical_date  timestamptz,
    actor         text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    ended_at      timestamptz
);
-- Only live runs are looked up by workflow (max_active_runs, promotion).
CREATE INDEX runs_live ON runs (workflow, id) WHERE state IN ('queued', 'running');

CREATE TABLE task_instances (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id           bigint NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    task_id          text NOT NULL,
    state            task_state NOT NULL,
    attempt          integer NOT NULL DEFAULT 0,
    handler          text NOT NULL,
    pool             text NOT NULL DEFAULT 'default',
    priority         integer NOT NULL DEFAULT 0,
    -- limited: a named pool or a per-task concurrency cap applies, so claims
    -- must count running instances under a lock; unlimited claims skip that.
    limited          boolean NOT NULL DEFAULT false,
    concurrency_key  text,
    max_concurrency  integer,
    -- task ids whose outputs this task receives (upstreams + template references)
    needs            text[] NOT NULL DEFAULT '{}',
    not_before       timestamptz,
    lease_owner      text,
    lease_until      timestamptz,
    output           jsonb,
    error            text,
    queued_at        timestamptz,
    started_at       timestamptz,
    ended_at         timestamptz,
    UNIQUE (run_id, task_id)
);
-- Claims read only these small partial indexes, however large history grows.
CREATE INDEX task_instances_claimable ON task_instances (priority DESC, id)
    WHERE state IN ('queued', 'up_for_retry') AND NOT limited;
CREATE INDEX task_instances_claimable_limited ON task_instances (pool, priority DESC, id)
    WHERE state IN ('queued', 'up_for_retry') AND limited;
CREATE INDEX task_instances_leases ON task_instances (lease_until) WHERE state = 'running';

-- Append-only: one row per state change of a task (task_id set) or a run
-- (task_id NULL), written in the same transaction as the change.
CREATE TABLE transitions (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id      bigint NOT NULL,
    task_id     text,
    from_state  text,
    to_state    text NOT NULL,
    attempt     integer,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor       text NOT NULL,
    reason      text
);
CREATE INDEX transitions_by_run ON transitions (run_id, id);

CREATE RULE transitions_no_update AS ON UPDATE TO transitions DO INSTEAD NOTHING;
