"""The statements of the raw-SQL ceilings (bench/ceilings.py).

They write exactly the rows and columns the engine writes for the same work
(orchestrator/store/sql/engine.sql and intake.sql): the guarded update of a
task or run, and in the same statement its transition row with the engine's
from/to states, attempt and reason. What they leave out is what a chain of
noop tasks does not need: no run lock (one task of a run is active at a time),
no planner (a chain's successor is the next task id), no notifications (the
probe's workers live in one process) and no handler. Each is one statement:
one round trip and, outside a transaction, one commit.

Every statement answers one row: (finished, ids, attempts) — the runs it
ended, and the task instances it leased, which go as they are into the
statement that completes them.
"""

from __future__ import annotations


def _answer(leased: str | None, finished: str | None) -> str:
    ended = f"(SELECT count(*) FROM {finished})" if finished else "0::bigint"
    if leased is None:
        return f"SELECT {ended} AS finished, '{{}}'::bigint[] AS ids, '{{}}'::integer[] AS attempts"
    return f"""SELECT {ended} AS finished,
       coalesce(array_agg(id ORDER BY id), '{{}}') AS ids,
       coalesce(array_agg(attempt ORDER BY id), '{{}}') AS attempts
FROM {leased}"""


# $1 workflow, $2 version, $3 how many runs, $4 the chain's task ids in order,
# $5 actor, $6 handler. Runs start running; a chain's first task is queued,
# the rest scheduled, each needing the one before (insert_runs and
# insert_task_instances).
_CREATE = """
WITH created AS (
    INSERT INTO runs (workflow, version, state, actor, started_at)
    SELECT $1, $2, 'running', $5, now() FROM generate_series(1, $3::integer)
    RETURNING id
), created_log AS (
    INSERT INTO transitions (run_id, task_id, from_state, to_state, actor, reason)
    SELECT id, NULL, NULL, 'running', $5, 'created' FROM created
), tasks AS (
    INSERT INTO task_instances (run_id, task_id, state, handler, needs, queued_at)
    SELECT c.id, k.task_id,
           CASE WHEN k.n = 1 THEN 'queued' ELSE 'scheduled' END::task_state, $6,
           CASE WHEN k.n = 1 THEN '{}'::text[] ELSE ARRAY[($4::text[])[k.n - 1]] END,
           CASE WHEN k.n = 1 THEN now() END
    FROM created c CROSS JOIN unnest($4::text[]) WITH ORDINALITY AS k(task_id, n)
    ORDER BY c.id, k.n
    RETURNING run_id, task_id, state
), tasks_log AS (
    INSERT INTO transitions (run_id, task_id, from_state, to_state, attempt, actor, reason)
    SELECT run_id, task_id, NULL, state::text, 0, $5, 'created' FROM tasks
)"""

#: Create runs of a chain: see _CREATE for the parameters.
CREATE_RUNS = f"{_CREATE}\nSELECT count(*) FROM created"

#: Create runs and notify channel $7 at commit, as a trigger wakes the worker.
CREATE_RUNS_AND_NOTIFY = f"{_CREATE}\nSELECT count(pg_notify($7, id::text)) FROM created"


def _claim(owner: str, limit: str, lease: str) -> str:
    """Pick (SKIP LOCKED, the engine's claim index), lease and log. Rows are
    found by id in an array (an index scan whatever the statistics say): a
    join with the picked rows may be planned as a scan of the whole table."""
    return f"""
picked AS (
    SELECT id, state FROM task_instances
    WHERE state IN ('queued', 'up_for_retry') AND NOT limited
      AND (not_before IS NULL OR not_before <= now())
    ORDER BY priority DESC, id
    LIMIT {limit}
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE task_instances t
    SET state = 'running', attempt = t.attempt + 1, lease_owner = {owner},
        lease_until = clock_timestamp() + make_interval(secs => {lease}),
        started_at = now(), not_before = NULL
    WHERE t.id = ANY(ARRAY(SELECT id FROM picked))
    RETURNING t.id, t.run_id, t.task_id, t.attempt
), claimed_log AS (
    INSERT INTO transitions (run_id, task_id, from_state, to_state, attempt, actor, reason)
    SELECT c.run_id, c.task_id, p.state::text, 'running', c.attempt, {owner}, 'claimed'
    FROM claimed c JOIN picked p ON p.id = c.id
)"""


# Completing: $1 task instance ids, $2 their attempts, $3 lease owner (and
# actor), $4 the chain's task ids in order. A task succeeds only while its
# lease holds (record_attempts); the last task of the chain ends its run
# (finish_runs). The ids are looked up in an array for the same reason as in
# _claim.
_COMPLETE = """
done AS (
    UPDATE task_instances t
    SET state = 'success', output = NULL, error = NULL, lease_owner = NULL,
        lease_until = NULL, not_before = NULL, ended_at = now()
    WHERE t.id = ANY($1::bigint[]) AND t.state = 'running' AND t.lease_owner = $3
      AND t.attempt = ($2::integer[])[array_position($1::bigint[], t.id)]
    RETURNING t.run_id, t.task_id, t.attempt,
              ($4::text[])[array_position($4::text[], t.task_id) + 1] AS successor
), done_log AS (
    INSERT INTO transitions (run_id, task_id, from_state, to_state, attempt, actor, reason)
    SELECT run_id, task_id, 'running', 'success', attempt, $3, 'handler returned' FROM done
), finished AS (
    UPDATE runs r SET state = 'success', ended_at = now()
    FROM done d WHERE r.id = d.run_id AND d.successor IS NULL AND r.state = 'running'
    RETURNING r.id
), finished_log AS (
    INSERT INTO transitions (run_id, task_id, from_state, to_state, actor, reason)
    SELECT id, NULL, 'running', 'success', $3, 'all tasks ended' FROM finished
)"""

# The successor is queued for any worker (apply_decisions).
_QUEUE_SUCCESSOR = """
queued AS (
    UPDATE task_instances t
    SET state = 'queued', queued_at = now(), lease_owner = NULL, lease_until = NULL
    FROM done d
    WHERE t.run_id = d.run_id AND t.task_id = d.successor AND t.state = 'scheduled'
    RETURNING t.run_id, t.task_id, t.attempt
), queued_log AS (
    INSERT INTO transitions (run_id, task_id, from_state, to_state, attempt, actor, reason)
    SELECT run_id, task_id, 'scheduled', 'queued', attempt, $3, 'trigger rule all_success'
    FROM queued
)"""

# The successor is queued and leased to the same worker in the same commit
# ($5 lease seconds): both transitions are logged, as if claimed at once.
_RUN_SUCCESSOR = """
leased AS (
    UPDATE task_instances t
    SET state = 'running', attempt = t.attempt + 1, queued_at = now(), started_at = now(),
        lease_owner = $3, lease_until = clock_timestamp() + make_interval(secs => $5),
        not_before = NULL
    FROM done d
    WHERE t.run_id = d.run_id AND t.task_id = d.successor AND t.state = 'scheduled'
    RETURNING t.id, t.run_id, t.task_id, t.attempt
), leased_log AS (
    INSERT INTO transitions (run_id, task_id, from_state, to_state, attempt, actor, reason)
    SELECT run_id, task_id, 'scheduled', 'queued', attempt - 1, $3, 'trigger rule all_success'
    FROM leased
    UNION ALL
    SELECT run_id, task_id, 'queued', 'running', attempt, $3, 'claimed' FROM leased
)"""

#: $1 lease owner, $2 how many, $3 lease seconds.
CLAIM = f"WITH {_claim('$1', '$2', '$3')}\n{_answer('claimed', None)}"

#: Complete and queue successors; claim nothing.
COMPLETE = f"WITH {_COMPLETE}, {_QUEUE_SUCCESSOR}\n{_answer(None, 'finished')}"

#: Complete and lease each successor to the same worker ($5 lease seconds).
COMPLETE_AND_RUN_SUCCESSOR = f"WITH {_COMPLETE}, {_RUN_SUCCESSOR}\n{_answer('leased', 'finished')}"

#: One batch of events, each with its run of one queued task: $1 dedup keys,
#: $2 payloads (JSON text), $3 meta (JSON text), $4 source, $5 channel,
#: $6 workflow, $7 version, $8 task id, $9 handler, $10 actor. Run ids are
#: drawn first so the event row names its run (insert_events, insert_runs,
#: insert_task_instances); a redelivered key starts nothing. The run's params
#: are the payload's order_id, as the trigger's template renders them.
INTAKE = """
WITH input AS (
    SELECT i.*, nextval(pg_get_serial_sequence('runs', 'id')) AS run_id
    FROM unnest($1::text[], $2::text[], $3::text[]) AS i(dedup_key, payload, meta)
), stored AS (
    INSERT INTO events (source, channel, dedup_key, payload, meta, actor, run_ids)
    SELECT $4, $5, dedup_key, payload::jsonb, meta::jsonb, $10, ARRAY[run_id] FROM input
    ON CONFLICT (dedup_key) DO NOTHING
    RETURNING id, run_ids[1] AS run_id, payload
), created AS (
    INSERT INTO runs (id, workflow, version, state, params, event_id, actor, started_at)
    SELECT run_id, $6, $7, 'running', jsonb_build_object('order_id', payload -> 'order_id'),
           id, $10, now()
    FROM stored
    RETURNING id
), created_log AS (
    INSERT INTO transitions (run_id, task_id, from_state, to_state, actor, reason)
    SELECT id, NULL, NULL, 'running', $10, 'created' FROM created
), tasks AS (
    INSERT INTO task_instances (run_id, task_id, state, handler, queued_at)
    SELECT id, $8, 'queued', $9, now() FROM created
    RETURNING run_id, task_id
), tasks_log AS (
    INSERT INTO transitions (run_id, task_id, from_state, to_state, attempt, actor, reason)
    SELECT run_id, task_id, NULL, 'queued', 0, $10, 'created' FROM tasks
)
SELECT count(*) FROM stored
"""
