-- Alerts: an outbox written in the transaction of the transition that raised
-- them, delivered by relays (orchestrator/alert_relay.py) to each route.

-- One row per (rule, run, task, kind): a happening raises its alert once.
CREATE TABLE alerts (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rule              text NOT NULL,  -- "<workflow>:<rule>" or "*:<rule>" (project-wide)
    kind              text NOT NULL,
    workflow          text NOT NULL,
    version           text NOT NULL,
    run_id            bigint NOT NULL,
    task_id           text NOT NULL DEFAULT '',  -- '' when about the whole run
    attempt           integer,
    error             text,
    detail            text,
    -- The rule's routes in order, each {"key", "spec"}: kept with the alert
    -- so a later change of the rule does not re-route alerts already raised.
    routes            jsonb NOT NULL,
    require_ack       boolean NOT NULL DEFAULT false,
    escalate_after_s  float8,
    escalated_to      integer NOT NULL DEFAULT 0,  -- the last route of the chain sent to
    escalate_at       timestamptz,
    acked_at          timestamptz,
    acked_by          text,
    ack_reason        text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (rule, run_id, task_id, kind)
);
CREATE INDEX alerts_to_escalate ON alerts (escalate_at)
    WHERE escalate_at IS NOT NULL AND acked_at IS NULL;
CREATE INDEX alerts_by_run ON alerts (run_id);

-- One row per route an alert is sent to.
CREATE TABLE alert_deliveries (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id      bigint NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    route_index   integer NOT NULL,
    route_key     text NOT NULL,
    state         text NOT NULL DEFAULT 'pending'
                  CHECK (state IN ('pending', 'delivered', 'undelivered')),
    attempts      integer NOT NULL DEFAULT 0,
    next_at       timestamptz NOT NULL DEFAULT now(),
    lease_owner   text,
    lease_until   timestamptz,
    last_error    text,
    delivered_at  timestamptz,
    UNIQUE (alert_id, route_index)
);
CREATE INDEX alert_deliveries_due ON alert_deliveries (next_at) WHERE state = 'pending';

-- Per-route, per-minute send counts: the rate limit shared by every relay.
CREATE TABLE alert_route_windows (
    route_key     text NOT NULL,
    window_start  timestamptz NOT NULL,
    sent          integer NOT NULL,
    granted       integer NOT NULL,  -- what the last take got (read back by RETURNING)
    PRIMARY KEY (route_key, window_start)
);

-- SLA deadlines of runs ('' task) and tasks, armed by the triggerer.
CREATE TABLE sla_deadlines (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id    bigint NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    task_id   text NOT NULL DEFAULT '',
    due_at    timestamptz NOT NULL,
    fired_at  timestamptz,
    UNIQUE (run_id, task_id)
);
CREATE INDEX sla_deadlines_due ON sla_deadlines (due_at) WHERE fired_at IS NULL;
