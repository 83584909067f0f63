-- Run lists filtered by workflow are cursor pages (newest first, id < cursor):
-- without this index a rare workflow's page scans the whole history.
CREATE INDEX runs_by_workflow ON runs (workflow, id);
