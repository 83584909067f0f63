-- Alerts about a dataset (dataset_stale, orchestrator/freshness.py): they
-- belong to no run. Such an alert names its dataset and the update it went
-- stale after, so each stale spell raises it once -- whichever scheduler sees
-- it first, and after restarts -- while a later spell raises it again.
ALTER TABLE alerts ALTER COLUMN run_id DROP NOT NULL;
ALTER TABLE alerts ADD COLUMN dataset text NOT NULL DEFAULT '';  -- '' when about a run
ALTER TABLE alerts ADD COLUMN stale_after timestamptz;
ALTER TABLE alerts DROP CONSTRAINT alerts_rule_run_id_task_id_kind_key;
ALTER TABLE alerts ADD CONSTRAINT alerts_raised_once
    UNIQUE NULLS NOT DISTINCT (rule, run_id, task_id, kind, dataset, stale_after);
-- Retention prunes dataset alerts by age (run alerts go with their run).
CREATE INDEX alerts_of_datasets ON alerts (created_at) WHERE run_id IS NULL;
