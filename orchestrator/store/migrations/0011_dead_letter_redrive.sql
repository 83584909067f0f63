-- Dead letters can be sent through routing again (redrive): each keeps how
-- often that was tried, the last error, and, once it worked, who redrove it
-- and the event and runs it started. A dead letter is redriven at most once.
ALTER TABLE dead_letter_events
    ADD COLUMN attempts          integer NOT NULL DEFAULT 0,
    ADD COLUMN last_attempt_at   timestamptz,
    ADD COLUMN redriven_at       timestamptz,
    ADD COLUMN redriven_by       text,
    ADD COLUMN redrive_event_id  bigint,
    ADD COLUMN redrive_run_ids   bigint[] NOT NULL DEFAULT '{}';
CREATE INDEX dead_letter_events_pending ON dead_letter_events (id)
    WHERE redriven_at IS NULL;

-- The (workflow, logical date) pairs whose runs retention deleted: a date
-- once processed stays processed, so a backfill or a catching-up scheduler
-- never creates its run again after the history is pruned.
CREATE TABLE logical_dates_pruned (
    workflow      text NOT NULL,
    logical_date  timestamptz NOT NULL,
    run_id        bigint NOT NULL,
    state         text NOT NULL,
    ended_at      timestamptz,
    pruned_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow, logical_date)
);
