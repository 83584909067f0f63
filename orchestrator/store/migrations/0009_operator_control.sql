-- Operator control: tasks held by an operator (pause a single task), and the
-- state their runnable instances wait in without a worker slot.

ALTER TYPE task_state ADD VALUE IF NOT EXISTS 'held';

-- One row per held (workflow, task); task '*' holds every task of the workflow.
CREATE TABLE task_holds (
    workflow  text NOT NULL,
    task      text NOT NULL,
    actor     text NOT NULL,
    reason    text NOT NULL DEFAULT '',
    at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow, task)
);

-- Attempts made before the task was last cleared: a cleared task starts a new
-- try with its whole retry budget, while attempt numbers keep counting.
ALTER TABLE task_instances ADD COLUMN tries_before integer NOT NULL DEFAULT 0;
