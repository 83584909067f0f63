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
