"""What the commit plan (:mod:`orchestrator.plan`) works on: the outcomes
it records, and what it learns from the store about runs, waits and tasks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from orchestrator.deferral import Defer
from orchestrator.states import RunState, TaskState


@dataclass(slots=True)
class Outcome:
    """The end of one attempt, to be recorded under its lease."""

    id: int
    run_id: int
    task_id: str
    attempt: int
    owner: str
    target: TaskState
    output: str | None = None
    """JSON text."""
    error: str | None = None
    delay_s: float | None = None
    """For ``up_for_retry``: when the next attempt may start."""
    reason: str = ""
    expired_only: bool = False
    """Set by the lease reaper: apply only if the lease has really run out."""
    deferral: Defer | None = None
    """For ``deferred``: what the attempt waits for."""


@dataclass(frozen=True, slots=True)
class LockedRun:
    id: int
    workflow: str
    version: str
    state: RunState


@dataclass(frozen=True, slots=True)
class EndedRun:
    """A run the guarded end moved, as ``finish_runs`` returns it."""

    id: int
    workflow: str
    logical_date: datetime | None
    state: RunState
    version: str = ""


@dataclass(frozen=True, slots=True)
class Happened:
    """Something alert rules may be set on (:mod:`orchestrator.alerts`),
    noted as the cascade passes it: the engine raises the alerts of those
    that match a rule in the same transaction."""

    kind: str
    """An :class:`~orchestrator.alert_spec.AlertKind` value, or ``run_succeeded``
    (a rule on ``run_succeeded_after_failure`` looks at the run before)."""
    run_id: int | None
    """None for what is about no run (a dataset gone stale)."""
    workflow: str
    version: str
    task_id: str = ""
    attempt: int | None = None
    error: str | None = None
    detail: str | None = None
    dataset: str = ""
    """The dataset an alert is about ('' when about a run)."""
    stale_after: datetime | None = None
    """For ``dataset_stale``: the last update before the stale spell (its key)."""


@dataclass(frozen=True, slots=True)
class QueuedRun:
    id: int
    version: str
    reopened: bool = False
    """Re-opened by an operator while its workflow had no room: its tasks
    exist (cleared ones scheduled) and are decided when it starts."""


@dataclass(frozen=True, slots=True)
class ActiveRuns:
    """A workflow's ``max_active_runs`` and how many of its runs are running."""

    limit: int
    running: int


@dataclass(frozen=True, slots=True)
class Recorded:
    runs: Mapping[int, LockedRun]
    """The runs, locked before the attempts were recorded."""
    accepted: frozenset[tuple[int, int]]
    """(task instance id, attempt) of the outcomes the lease guard accepted."""
    states: Mapping[int, Mapping[str, TaskState]]
    """Task states of the deciding runs (the candidates still running) before
    this batch."""


@dataclass(frozen=True, slots=True)
class WaitOnRun:
    id: int
    key: str


@dataclass(frozen=True, slots=True)
class EndedWait:
    """A wait the guarded end moved out of ``waiting``."""

    id: int
    task_instance_id: int
    run_id: int
    task_id: str
    attempt: int
    resume: str
    """``success``: the wait's result is the task's; ``handler``: call it again."""


@dataclass(frozen=True, slots=True)
class MovedTask:
    run_id: int
    task_id: str
    state: TaskState
