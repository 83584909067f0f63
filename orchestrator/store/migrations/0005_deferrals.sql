-- Deferrals: a task waiting for a condition holds a row here, not a worker slot.

CREATE TABLE deferrals (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_instance_id  bigint NOT NULL REFERENCES task_instances (id) ON DELETE CASCADE,
    run_id            bigint NOT NULL,
    task_id           text NOT NULL,
    attempt           integer NOT NULL,
    kind              text NOT NULL,
    state             text NOT NULL DEFAULT 'waiting'
                      CHECK (state IN ('waiting', 'resolved')),
    -- Event-driven waits: the exact correlation key an event must produce
    -- (e.g. kafka:shipments:payload.order_id:"A-1"), or a regular expression
    -- over file paths for a glob with wildcards.
    match_key         text,
    match_pattern     text,
    since             timestamptz NOT NULL,
    config            jsonb NOT NULL DEFAULT '{}'::jsonb,
    description       text NOT NULL,
    wake_at           timestamptz,
    timeout_at        timestamptz,
    on_timeout        text NOT NULL CHECK (on_timeout IN ('failed', 'skipped')),
    resume            text NOT NULL CHECK (resume IN ('success', 'handler')),
    outcome           text,
    resolved_by       text,
    event_id          bigint,
    created_at        timestamptz NOT NULL DEFAULT now(),
    resolved_at       timestamptz,
    UNIQUE (task_instance_id, attempt)
);
CREATE INDEX deferrals_waiting_key ON deferrals (match_key)
    WHERE state = 'waiting' AND match_key IS NOT NULL;
CREATE INDEX deferrals_waiting_pattern ON deferrals (kind)
    WHERE state = 'waiting' AND match_pattern IS NOT NULL;
-- The triggerer's timers: the next moment each wait needs attention.
CREATE INDEX deferrals_waiting_due ON deferrals (least(wake_at, timeout_at))
    WHERE state = 'waiting';
CREATE INDEX deferrals_by_run ON deferrals (run_id);

-- Correlation keys of events that some sensor may wait for, so a sensor that
-- starts after its event arrived still finds it.
CREATE TABLE event_keys (
    key          text NOT NULL,
    event_id     bigint NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key, event_id)
);
CREATE INDEX event_keys_event ON event_keys (event_id);

-- What woke a deferred handler (resume = 'handler'): given to its next attempt.
ALTER TABLE task_instances ADD COLUMN resume_payload jsonb;
