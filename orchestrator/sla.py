"""SLAs and task deadlines: timers armed when a run is created, fired by the triggerer.

A workflow's ``sla.finish_within`` and its tasks' ``deadline`` become rows of
``sla_deadlines`` in the transaction that creates the run -- queued or not --
with an absolute due time. The triggerer keeps them on a heap of their own
(:class:`SlaTimers`, driven by its loop and clock: no slot, no task per
timer) and fires each once at its time, through a guarded update: the run
missed its SLA if it has not succeeded by then (a task, if it has not
succeeded or been skipped), and then ``sla_missed`` is raised through the
alert rules in the same transaction.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import asyncpg

from orchestrator.clock import Clock
from orchestrator.plan import Happened
from orchestrator.spec import WorkflowSpec
from orchestrator.store import SQL

if TYPE_CHECKING:
    from orchestrator.engine import Engine

log = logging.getLogger(__name__)

_MET_RUN = frozenset({"success", "cancelled"})
_MET_TASK = frozenset({"success", "skipped"})


def has_deadlines(spec: WorkflowSpec) -> bool:
    """Whether a run of ``spec`` gets any deadline (most get none)."""
    return spec.sla is not None or any(t.deadline is not None for t in spec.tasks)


def deadlines_of(
    run_id: int, spec: WorkflowSpec, logical_date: datetime | None
) -> list[tuple[int, str, datetime | None, float]]:
    """(run, task or '', start or None for "now", seconds) of one new run."""
    start = logical_date if spec.sla is not None and spec.sla.from_ == "logical_date" else None
    out: list[tuple[int, str, datetime | None, float]] = []
    if spec.sla is not None:
        out.append((run_id, "", start, spec.sla.finish_within))
    out += [(run_id, t.id, start, t.deadline) for t in spec.tasks if t.deadline is not None]
    return out


async def arm(
    conn: asyncpg.Connection,
    runs: Sequence[tuple[int, WorkflowSpec, datetime | None]],
    clock: Clock,
) -> bool:
    """Record the deadlines of new runs; True if there were any (the triggerer
    is told). No statement at all for workflows without SLAs."""
    rows = [d for run_id, spec, date in runs for d in deadlines_of(run_id, spec, date)]
    if not rows:
        return False
    await conn.execute(
        SQL.insert_sla_deadlines,
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
        [r[3] for r in rows],
        clock.stamp(),
    )
    return True


def _missed(row: asyncpg.Record) -> bool:
    if row["run_state"] in _MET_RUN:
        return False
    return not row["task_id"] or row["task_state"] not in _MET_TASK


def _detail(row: asyncpg.Record) -> str:
    what = f"task {row['task_id']}" if row["task_id"] else "run"
    state = row["task_state"] if row["task_id"] else row["run_state"]
    return f"{what} missed its deadline {row['due_at'].isoformat()} (still {state})"


_BEGINNING = datetime.min.replace(tzinfo=UTC)


class SlaTimers:
    """The triggerer's heap of SLA deadlines: loaded like its waits (a bulk
    read within a horizon, new ones by id on a NOTIFY or poll) and fired in
    batches."""

    def __init__(self, engine: Engine, *, actor: str, horizon: timedelta, batch: int) -> None:
        self.engine = engine
        self.actor = actor
        self.horizon = horizon
        self.batch = batch
        self._heap: list[tuple[datetime, int]] = []
        self._armed: set[int] = set()
        self._horizon_end = _BEGINNING
        self._last_id = 0
        self.fired = 0
        """Deadlines this triggerer fired (missed or met)."""

    def next_due(self) -> datetime | None:
        return self._heap[0][0] if self._heap else None

    def _arm(self, due: datetime, deadline_id: int) -> None:
        if deadline_id not in self._armed:
            self._armed.add(deadline_id)
            heapq.heappush(self._heap, (due, deadline_id))

    async def reload(self, now: datetime) -> None:
        """Everything due within the horizon (a full read: the safety net)."""
        end = now + self.horizon
        async with self.engine.db.pool.acquire() as conn:
            if self._last_id == 0:
                self._last_id = await conn.fetchval(SQL.sla_last_id)
            rows = await conn.fetch(SQL.sla_deadlines_due_before, end, self.batch * 100)
        self._heap = [(r["due_at"], r["id"]) for r in rows]
        heapq.heapify(self._heap)
        self._armed = {r["id"] for r in rows}
        self._horizon_end = end if len(rows) < self.batch * 100 else rows[-1]["due_at"]

    async def load_new(self) -> None:
        """Deadlines added since the last look (those due beyond the horizon
        wait for a reload). A row whose transaction commits late is found by
        the next reload."""
        async with self.engine.db.pool.acquire() as conn:
            rows = await conn.fetch(SQL.sla_deadlines_new, self._last_id, self.batch)
        for r in rows:
            self._last_id = max(self._last_id, r["id"])
            if r["due_at"] < self._horizon_end:
                self._arm(r["due_at"], r["id"])

    async def fire(self, now: datetime) -> None:
        ids: list[int] = []
        while self._heap and self._heap[0][0] <= now and len(ids) < self.batch:
            _due, deadline_id = heapq.heappop(self._heap)
            self._armed.discard(deadline_id)
            ids.append(deadline_id)
        if not ids:
            return
        engine = self.engine
        async with engine.unit() as (conn, notices):
            rows = await conn.fetch(SQL.fire_sla_deadlines, ids, now)
            missed = [r for r in rows if _missed(r)]
            happened = [
                Happened(
                    "sla_missed",
                    r["run_id"],
                    r["workflow"],
                    r["version"],
                    r["task_id"],
                    r["attempt"] if r["task_id"] else None,
                    None,
                    _detail(r),
                )
                for r in missed
            ]
            if happened:
                await engine.alerts.record(conn, happened, engine.specs, notices)
        self.fired += len(rows)
        for r in missed:
            log.warning("SLA missed: workflow %s run %s %s", r["workflow"], r["run_id"], _detail(r))
