-- Cron schedules: how far each (workflow, schedule trigger) has been handled,
-- so that after downtime the catch-up policy knows what was missed.
-- Runs themselves are deduplicated by their event key and by the unique
-- (workflow, logical_date) index on runs; this table only holds progress.

CREATE TABLE schedules (
    workflow           text NOT NULL,
    -- cron and time zone: a changed expression or zone is a new schedule
    -- (it starts afresh from its trigger's start, or now).
    trigger_key        text NOT NULL,
    cron               text NOT NULL,
    timezone           text NOT NULL,
    -- Every interval ending at or before this has been handled: its run was
    -- created, or the catch-up policy skipped it.
    done_until         timestamptz NOT NULL,
    last_logical_date  timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow, trigger_key)
);
