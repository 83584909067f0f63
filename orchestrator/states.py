"""Task and run states, and the one table of legal transitions.

This module is pure data. The decision code checks every task transition it
produces against :data:`TASK_TRANSITIONS`; the store then applies it as a
compare-and-set on the exact source state the decision saw (``WHERE state =
<source>``), so a row that moved in the meantime is left alone. Run ends pass
:func:`legal_run_sources` into their guard (``WHERE state = ANY($n)``). The
claim SQL lists the claimable states literally (for its partial indexes); a
unit test keeps those lists equal to :data:`CLAIMABLE_TASK_STATES`.

Operator actions (clear, mark, cancel, task holds: :mod:`orchestrator.operations`)
may also take the edges of :data:`OPERATOR_TASK_TRANSITIONS` and
:data:`OPERATOR_RUN_TRANSITIONS`, which the engine's own decisions never take:
``legal_sources(target, operator=True)`` is their guard. Kept apart so that
the engine's table stays acyclic (terminal states have no engine edge, and no
engine edge leads back to ``scheduled``).
"""

from __future__ import annotations

from enum import StrEnum


class TaskState(StrEnum):
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    DEFERRED = "deferred"
    UP_FOR_RETRY = "up_for_retry"
    SUCCESS = "success"
    FAILED = "failed"
    SKIPPED = "skipped"
    UPSTREAM_FAILED = "upstream_failed"
    DEAD_LETTERED = "dead_lettered"
    HELD = "held"
    """Runnable, but its task is paused by an operator: waits without a slot."""


class RunState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"


T = TaskState

#: A task state by its stored name: a dict lookup, where ``TaskState(name)``
#: goes through the enum machinery (about 1 us; a completion reads every task
#: state of the runs it decides).
TASK_STATE_BY_NAME: dict[str, TaskState] = {s.value: s for s in TaskState}

#: Legal task transitions: source state -> the states it may move to.
TASK_TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    # -> held: runnable while an operator holds the task (decided instead of queued).
    T.SCHEDULED: frozenset({T.QUEUED, T.HELD, T.SKIPPED, T.UPSTREAM_FAILED}),
    # queued -> skipped/upstream_failed happens only when a run is cancelled.
    T.QUEUED: frozenset({T.RUNNING, T.SKIPPED, T.UPSTREAM_FAILED}),
    # running -> held: a retry of a task an operator holds (it keeps its delay).
    T.RUNNING: frozenset(
        {T.SUCCESS, T.FAILED, T.UP_FOR_RETRY, T.HELD, T.DEFERRED, T.DEAD_LETTERED, T.SKIPPED}
    ),
    # deferred -> held: a wait that resumes the handler of a held task.
    T.DEFERRED: frozenset({T.QUEUED, T.HELD, T.SUCCESS, T.FAILED, T.SKIPPED, T.DEAD_LETTERED}),
    # A due retry is claimed straight from up_for_retry (one statement, no
    # extra hop through queued); cancelling a run skips it.
    T.UP_FOR_RETRY: frozenset({T.QUEUED, T.RUNNING, T.SKIPPED}),
    T.SUCCESS: frozenset(),
    T.FAILED: frozenset(),
    T.SKIPPED: frozenset(),
    T.UPSTREAM_FAILED: frozenset(),
    T.DEAD_LETTERED: frozenset(),
    # A held task leaves only by an operator (unpause, mark) or a cancel.
    T.HELD: frozenset({T.SKIPPED}),
}

_MARKED = frozenset({T.SUCCESS, T.FAILED, T.SKIPPED})
_ENDED = (T.SUCCESS, T.FAILED, T.SKIPPED, T.UPSTREAM_FAILED, T.DEAD_LETTERED)

#: Operator-only task edges, never taken by the engine's decisions:
#: clear (a finished task -> scheduled, decided again), mark (any task not
#: running -> success/failed/skipped by hand), hold (queued or up_for_retry ->
#: held) and release (held -> queued).
OPERATOR_TASK_TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    **{s: frozenset({T.SCHEDULED} | _MARKED) - {s} for s in _ENDED},
    T.SCHEDULED: _MARKED,
    T.QUEUED: _MARKED | {T.HELD},
    T.UP_FOR_RETRY: _MARKED | {T.HELD},
    T.DEFERRED: _MARKED,
    T.HELD: _MARKED | {T.QUEUED},
    # A running attempt is never marked or cleared: cancel the run, or let it end.
    T.RUNNING: frozenset(),
}

RUN_TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    RunState.QUEUED: frozenset({RunState.RUNNING, RunState.CANCELLED}),
    RunState.RUNNING: frozenset({RunState.SUCCESS, RunState.FAILED, RunState.CANCELLED}),
    RunState.SUCCESS: frozenset(),
    RunState.FAILED: frozenset(),
    RunState.CANCELLED: frozenset(),
}

#: Operator-only run edges: clearing or marking tasks of a finished run re-opens
#: it: running, or queued while its workflow's max_active_runs leaves no room.
_REOPENED = frozenset({RunState.RUNNING, RunState.QUEUED})
OPERATOR_RUN_TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    RunState.QUEUED: frozenset(),
    RunState.RUNNING: frozenset(),
    RunState.SUCCESS: _REOPENED,
    RunState.FAILED: _REOPENED,
    RunState.CANCELLED: _REOPENED,
}

TERMINAL_TASK_STATES: frozenset[TaskState] = frozenset(
    s for s, targets in TASK_TRANSITIONS.items() if not targets
)
TERMINAL_RUN_STATES: frozenset[RunState] = frozenset(
    s for s, targets in RUN_TRANSITIONS.items() if not targets
)
#: Run states by name, for rows read in bulk (a dict lookup, not an enum call).
RUN_STATE_BY_NAME: dict[str, RunState] = {s.value: s for s in RunState}
#: Terminal states that count as a failure for trigger rules and run outcome.
FAILED_TASK_STATES: frozenset[TaskState] = frozenset({T.FAILED, T.UPSTREAM_FAILED, T.DEAD_LETTERED})
#: States in which a task may be claimed by a worker.
CLAIMABLE_TASK_STATES: frozenset[TaskState] = frozenset({T.QUEUED, T.UP_FOR_RETRY})


def is_legal(source: TaskState, target: TaskState, *, operator: bool = False) -> bool:
    """Whether ``source -> target`` is an engine edge (or, with ``operator``,
    an engine or operator edge)."""
    return target in TASK_TRANSITIONS[source] or (
        operator and target in OPERATOR_TASK_TRANSITIONS[source]
    )


def is_legal_run(source: RunState, target: RunState, *, operator: bool = False) -> bool:
    return target in RUN_TRANSITIONS[source] or (
        operator and target in OPERATOR_RUN_TRANSITIONS[source]
    )


def legal_sources(target: TaskState, *, operator: bool = False) -> list[str]:
    """The states a task may be in for a move to ``target``: the SQL guard."""
    return sorted(s.value for s in TaskState if is_legal(s, target, operator=operator))


def legal_run_sources(target: RunState, *, operator: bool = False) -> list[str]:
    return sorted(s.value for s in RunState if is_legal_run(s, target, operator=operator))
