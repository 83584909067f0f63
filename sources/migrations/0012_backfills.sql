-- Detached backfills: a durable request that the scheduler's leader keeps
-- driving (a few runs at a time) until every date of its range is done, or
-- it is cancelled. Runs themselves stay unique per (workflow, logical date).
CREATE TABLE backfills (
    id           bigserial PRIMARY KEY,
    workflow     text NOT NULL,
    -- The range as given (ISO 8601; without an offset: the schedule's zone).
    range_start  text NOT NULL,
    range_end    text NOT NULL,
    cron         text,              -- NULL: the workflow's own schedule
    timezone     text NOT NULL DEFAULT 'UTC',
    reprocess    text CHECK (reprocess IN ('failed', 'all')),
    max_active   integer NOT NULL CHECK (max_active > 0),
    state        text NOT NULL DEFAULT 'running'
                 CHECK (state IN ('running', 'done', 'cancelled', 'failed')),
    actor        text NOT NULL,
    reason       text NOT NULL DEFAULT '',
    -- Dates up to and including this one have been started (or skipped).
    cursor_date  timestamptz,
    -- Runs this backfill started or cleared that have not ended yet.
    active       bigint[] NOT NULL DEFAULT '{}',
    -- total, started, created, reprocessed, existed, pruned, succeeded, failed, ...
    counts       jsonb NOT NULL DEFAULT '{}',
    message      text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    ended_at     timestamptz
);
CREATE INDEX backfills_running ON backfills (id) WHERE state = 'running';
CREATE INDEX backfills_by_workflow ON backfills (workflow, id);
