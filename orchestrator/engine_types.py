"""What the engine is given and gives back: run requests, claimed tasks and
the result of a completion."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import asyncpg
import orjson

from orchestrator.metrics import METRICS
from orchestrator.plan import Outcome
from orchestrator.states import RunState


@dataclass(frozen=True, slots=True)
class RunRequest:
    workflow: str
    params: Mapping[str, Any] = field(default_factory=dict)
    logical_date: datetime | None = None
    interval_end: datetime | None = None
    event_id: int | None = None
    """The event that started the run, if any."""
    actor: str | None = None
    """Who asked for it, when not the actor of the whole call (events of
    several callers committed together)."""
    trigger: str = ""
    """Which trigger of the workflow asked for it (intake: to hold it while paused)."""


@dataclass(frozen=True, slots=True)
class Claimed:
    """A task instance leased to a worker, with what its handler needs."""

    id: int
    run_id: int
    task_id: str
    attempt: int
    handler: str
    workflow: str
    version: str
    params: dict[str, Any]
    logical_date: datetime | None
    interval_end: datetime | None
    upstream: dict[str, Any]
    resumed: Any = None
    """What woke this task, when a handler deferred and is resumed."""
    tries_before: int = 0
    """Attempts made before an operator last cleared the task: its retry
    policy counts only the attempts since (``attempt - tries_before``)."""


@dataclass(slots=True)
class HandOver:
    """A claim for a worker made by the statements of one unit of work: a
    completion's for the worker that finished its attempts (the statement
    that queues their successors claims them, apply_decisions), or any
    unit's for the worker of its own process (:meth:`Engine.unit`: the
    statement that creates runs may claim their roots, insert_runs, and the
    claim statement takes what is queued after it, at the end of the unit).
    The worker's slots are reserved when a statement first asks how many
    there are."""

    owner: str
    reserve: Callable[[], int]
    reserved: int | None = None
    """Slots reserved (None: not asked yet)."""
    claimed: list[Claimed] = field(default_factory=list)
    limited_waiting: bool | None = None
    """As a claim saw it; None until a statement has claimed."""
    queued_then: int = 0
    """The unit's queued count when a statement last claimed: work queued
    since is left for the claim at the end of the unit."""

    def room(self) -> int:
        if self.reserved is None:
            self.reserved = self.reserve()
        return self.reserved - len(self.claimed)


@dataclass(slots=True)
class Completion:
    accepted: list[Outcome]
    rejected: list[Outcome]
    claimed: list[Claimed]
    finished_runs: dict[int, RunState]
    limited_waiting: bool | None = None
    """Whether limited work waits to run, as the commit's claim saw it (None:
    nothing was claimed in it). While it does, the claim left it all to the
    worker's claim loop, which orders both kinds by priority."""


class LocalWorker(Protocol):
    """A worker in the engine's own process. A commit that queues work claims
    some of it for this worker in the same transaction, so the work starts
    when the commit returns: no notification, no second commit."""

    owner: str

    def reserve(self) -> int:
        """Slots set aside for a claim about to be made (0: take nothing)."""
        ...

    def hand_over(
        self, claimed: list[Claimed], reserved: int, limited_waiting: bool | None
    ) -> None:
        """After the commit (``claimed`` empty when it failed): start what was
        claimed and give back the ``reserved`` slots."""
        ...


def claimed_from_rows(rows: Sequence[asyncpg.Record]) -> list[Claimed]:
    """Claimed tasks from the rows a claim returned (their queue wait is counted);
    a row without an id only carries the claim's answer about limited work."""
    rows = [r for r in rows if r["id"] is not None]
    METRICS.tasks_claimed(r["queue_wait_s"] for r in rows)
    return [
        Claimed(
            id=r["id"],
            run_id=r["run_id"],
            task_id=r["task_id"],
            attempt=r["attempt"],
            handler=r["handler"],
            workflow=r["workflow"],
            version=r["version"],
            params=orjson.loads(r["params"]),
            logical_date=r["logical_date"],
            interval_end=r["interval_end"],
            upstream=orjson.loads(r["upstream"]) if r["upstream"] else {},
            resumed=orjson.loads(r["resume_payload"]) if r["resume_payload"] else None,
            tries_before=r["tries_before"],
        )
        for r in rows
    ]
