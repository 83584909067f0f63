-- Task logs: what each attempt wrote (ctx.log records, stdout, stderr), in
-- chunks of whole lines appended by each worker's background log writer. Rows
-- are only ever inserted; retention deletes them with their run (prune_runs).
-- No foreign key: a chunk that arrives after its run was pruned is harmless,
-- and inserts stay off the runs table's locks.
CREATE TABLE task_logs (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id     bigint NOT NULL,
    task_id    text NOT NULL,
    attempt    integer NOT NULL,
    stream     text NOT NULL CHECK (stream IN ('log', 'stdout', 'stderr', 'meta')),
    logged_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    body       text NOT NULL
);
CREATE INDEX task_logs_by_attempt ON task_logs (run_id, task_id, attempt, id);
