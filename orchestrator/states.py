"""Task and run states, and the one table of legal transitions.

This module is pure data. The decision code checks every task transition it
produces against :data:`TASK_TRANSITIONS`; the store then applies it as a
compare-and-set on the exact source state the decision saw (``WHERE state =
<source>``), so a row that moved in the meantime is left alone. Run ends pass
:func:`legal_run_sources` into their guard (``WHERE state = ANY($n)``). The
claim SQL lists the claimable states literally (for its partial indexes); a
unit test keeps those lists equal to :data:`CLAIMABLE_TASK_STATES`.
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


class RunState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"


T = TaskState

#: Legal task transitions: source state -> the states it may move to.
TASK_TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    T.SCHEDULED: frozenset({T.QUEUED, T.SKIPPED, T.UPSTREAM_FAILED}),
    # queued -> skipped/upstream_failed happens only when a run is cancelled.
    T.QUEUED: frozenset({T.RUNNING, T.SKIPPED, T.UPSTREAM_FAILED}),
    T.RUNNING: frozenset(
        {T.SUCCESS, T.FAILED, T.UP_FOR_RETRY, T.DEFERRED, T.DEAD_LETTERED, T.SKIPPED}
    ),
    T.DEFERRED: frozenset({T.QUEUED, T.SUCCESS, T.FAILED, T.SKIPPED, T.DEAD_LETTERED}),
    # A due retry is claimed straight from up_for_retry (one statement, no
    # extra hop through queued); cancelling a run skips it.
    T.UP_FOR_RETRY: frozenset({T.QUEUED, T.RUNNING, T.SKIPPED}),
    T.SUCCESS: frozenset(),
    T.FAILED: frozenset(),
    T.SKIPPED: frozenset(),
    T.UPSTREAM_FAILED: frozenset(),
    T.DEAD_LETTERED: frozenset(),
}

RUN_TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    RunState.QUEUED: frozenset({RunState.RUNNING, RunState.CANCELLED}),
    RunState.RUNNING: frozenset({RunState.SUCCESS, RunState.FAILED, RunState.CANCELLED}),
    RunState.SUCCESS: frozenset(),
    RunState.FAILED: frozenset(),
    RunState.CANCELLED: frozenset(),
}

TERMINAL_TASK_STATES: frozenset[TaskState] = frozenset(
    s for s, targets in TASK_TRANSITIONS.items() if not targets
)
TERMINAL_RUN_STATES: frozenset[RunState] = frozenset(
    s for s, targets in RUN_TRANSITIONS.items() if not targets
)
#: Terminal states that count as a failure for trigger rules and run outcome.
FAILED_TASK_STATES: frozenset[TaskState] = frozenset({T.FAILED, T.UPSTREAM_FAILED, T.DEAD_LETTERED})
#: States in which a task may be claimed by a worker.
CLAIMABLE_TASK_STATES: frozenset[TaskState] = frozenset({T.QUEUED, T.UP_FOR_RETRY})


def is_legal(source: TaskState, target: TaskState) -> bool:
    return target in TASK_TRANSITIONS[source]


def is_legal_run(source: RunState, target: RunState) -> bool:
    return target in RUN_TRANSITIONS[source]


def legal_sources(target: TaskState) -> list[str]:
    """The states a task may be in for a move to ``target``: the SQL guard."""
    return sorted(s.value for s, targets in TASK_TRANSITIONS.items() if target in targets)


def legal_run_sources(target: RunState) -> list[str]:
    return sorted(s.value for s, targets in RUN_TRANSITIONS.items() if target in targets)
