-- Who did what: every operator action (clear, cancel, mark, pause, unpause,
-- redrive, backfill, pool change) with its actor, time and reason. The table
-- is append-only: rows are never changed, and deleted only by an explicit
-- retention pass that sets orchestrator.audit_prune for its transaction.
CREATE TABLE audit (
    id        bigserial PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    actor     text NOT NULL,
    action    text NOT NULL,
    workflow  text,
    run_id    bigint,
    task_id   text,
    reason    text NOT NULL DEFAULT '',
    detail    jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_by_workflow ON audit (workflow, id) WHERE workflow IS NOT NULL;
CREATE INDEX audit_by_run ON audit (run_id, id) WHERE run_id IS NOT NULL;

CREATE FUNCTION audit_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('orchestrator.audit_prune', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'the audit log is append-only (% refused)', TG_OP;
END $$;

CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_is_append_only();
