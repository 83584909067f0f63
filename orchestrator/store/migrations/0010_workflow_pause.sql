-- Pausing a workflow: while a row names it here, no new run of it starts.
-- Events that would have started one are held (held_events) per the
-- workflow's on_pause policy: buffered, coalesced at unpause, or dropped.
CREATE TABLE workflow_pauses (
    workflow      text PRIMARY KEY,
    paused_at     timestamptz NOT NULL DEFAULT now(),
    actor         text NOT NULL,
    reason        text NOT NULL DEFAULT '',
    hold_running  boolean NOT NULL DEFAULT false
);

-- One row per (event, trigger) a paused workflow did not start a run for.
-- buffered -> started (its run) | coalesced (folded into the run of a later
-- event of the same trigger); dropped rows say why.
CREATE TABLE held_events (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow      text NOT NULL,
    event_id      bigint NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    trigger_key   text NOT NULL,
    policy        text NOT NULL CHECK (policy IN ('buffer', 'coalesce', 'drop')),
    state         text NOT NULL CHECK (state IN ('buffered', 'started', 'coalesced', 'dropped')),
    params        jsonb NOT NULL DEFAULT '{}'::jsonb,
    logical_date  timestamptz,
    interval_end  timestamptz,
    reason        text NOT NULL DEFAULT '',
    run_id        bigint,
    held_at       timestamptz NOT NULL DEFAULT now(),
    released_at   timestamptz
);
CREATE INDEX held_events_buffered ON held_events (workflow, id) WHERE state = 'buffered';
CREATE INDEX held_events_by_workflow ON held_events (workflow, id);
CREATE INDEX held_events_by_event ON held_events (event_id);

-- The paused ones among $1, each with the version its new runs would start
-- with. Takes a shared transaction lock per name first (in a statement of its
-- own, so the read below sees whatever a pause or unpause that held the lock
-- committed): pausing and unpausing take it exclusively, so they wait for
-- in-flight intake transactions of the workflow, and those started later wait
-- for them.
CREATE FUNCTION orchestrator_paused(names text[])
RETURNS TABLE (workflow text, version text) LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    n text;
BEGIN
    FOREACH n IN ARRAY (SELECT coalesce(array_agg(DISTINCT x ORDER BY x), '{}') FROM unnest(names) x)
    LOOP
        PERFORM pg_advisory_xact_lock_shared(1346459989, hashtext(n));
    END LOOP;
    RETURN QUERY
        SELECT p.workflow, w.current_version
        FROM workflow_pauses p JOIN workflows w ON w.name = p.workflow
        WHERE p.workflow = ANY(names);
END $$;

-- `orchestrator workflows` shows each workflow's newest run.
CREATE INDEX runs_by_workflow ON runs (workflow, id);
