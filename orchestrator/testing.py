"""A test kit for your workflows: run them in this process, on a scratch
database, with a clock that moves only when the test says so.

::

    from orchestrator.testing import WorkflowTest

    async def test_ingest(admin_url):
        async with WorkflowTest(admin_url, workflows=[spec], registry=registry) as wt:
            run = await wt.run("ingest", {"day": "2026-01-01"})
            assert run.state == "success"
            assert run.outputs["load"] == {"rows": 3}

``admin_url`` names a PostgreSQL server and a user allowed to create
databases. :class:`WorkflowTest` creates a database of its own there, migrates
it, starts a worker and a triggerer on it, and drops it at the end. Time is a
:class:`ManualClock` (started at the real time unless given): time sensors,
poll sensors and schedules move only when the test calls
``await wt.clock.advance(...)``. Handlers read the same clock as ``ctx.clock``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any

import orjson

from orchestrator.app import Orchestrator
from orchestrator.clock import SYSTEM_CLOCK, Clock, ManualClock, SystemClock, real_pause
from orchestrator.registry import HandlerRegistry
from orchestrator.run_waiter import RunWaiter
from orchestrator.settings import Settings
from orchestrator.sources import Source
from orchestrator.spec import WorkflowSpec
from orchestrator.states import RunState
from orchestrator.store import SQL, create_database, drop_database

__all__ = ["Clock", "ManualClock", "RunResult", "SystemClock", "TaskResult", "WorkflowTest"]

#: Settings for a test: a few worker slots and a short poll, so a lost wake-up
#: costs a fraction of a second; no HTTP server, Kafka or landing zone.
TEST_SETTINGS: dict[str, Any] = {
    "worker_slots": 4,
    "poll_interval_s": 0.2,
    "roles": "worker,triggerer",
}

#: How often :meth:`WorkflowTest.wait_for_task` looks at the task (real time: the
#: worker commits in real time whatever the clock says).
TASK_POLL_S = 0.02


@dataclass(frozen=True, slots=True)
class TaskResult:
    """One task of a finished run."""

    state: str
    attempt: int
    output: Any
    """What the handler returned (decoded JSON), or None."""
    error: str | None


@dataclass(frozen=True, slots=True)
class RunResult:
    """A run once it has ended."""

    run_id: int
    state: RunState
    tasks: dict[str, TaskResult] = field(default_factory=dict)

    @property
    def outputs(self) -> dict[str, Any]:
        """Each task's output, by task id."""
        return {task_id: t.output for task_id, t in self.tasks.items()}


class WorkflowTest:
    """An in-process orchestrator on a scratch database (see the module docs)."""

    def __init__(
        self,
        admin_url: str,
        *,
        workflows: Iterable[WorkflowSpec] = (),
        registry: HandlerRegistry | None = None,
        clock: Clock | None = None,
        settings: Settings | None = None,
        sources: Iterable[Source] = (),
        timeout_s: float = 30.0,
    ) -> None:
        """
        :param admin_url: a server and a user that may create databases.
        :param workflows: the workflows under test.
        :param registry: the handlers they call (e.g. ``handlers.builtin_registry()``
            with yours added).
        :param clock: default: a :class:`ManualClock` at the current time.
        :param settings: default: :data:`TEST_SETTINGS`.
        :param timeout_s: how long :meth:`wait` waits for a run by default.
        """
        self.admin_url = admin_url
        self.clock: Clock = clock or ManualClock(SYSTEM_CLOCK.now())
        self.settings = settings or Settings(**TEST_SETTINGS)
        self.timeout_s = timeout_s
        self._workflows = list(workflows)
        self._registry = registry
        self._sources = list(sources)
        self._name = f"orch_test_{uuid.uuid4().hex[:12]}"
        self._orchestrator: Orchestrator | None = None
        self._waiter: RunWaiter | None = None

    @property
    def manual_clock(self) -> ManualClock:
        """The clock, when it is a :class:`ManualClock` (the default)."""
        if not isinstance(self.clock, ManualClock):
            raise TypeError("this WorkflowTest was given a clock that is not a ManualClock")
        return self.clock

    @property
    def orchestrator(self) -> Orchestrator:
        """The running orchestrator (its ``engine``, ``db``, ``register`` ...)."""
        if self._orchestrator is None:
            raise RuntimeError("use WorkflowTest as `async with WorkflowTest(...) as wt:`")
        return self._orchestrator

    async def start(self) -> None:
        url = await create_database(self.admin_url, self._name)
        try:
            orchestrator = Orchestrator(
                self.settings,
                url,
                registry=self._registry,
                workflows=self._workflows,
                clock=self.clock,
                sources=self._sources,
            )
            await orchestrator.start()
            self._orchestrator = orchestrator
            assert orchestrator.db is not None
            self._waiter = RunWaiter(orchestrator.db)
            await self._waiter.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        try:
            if self._waiter is not None:
                await self._waiter.stop()
            if self._orchestrator is not None:
                await self._orchestrator.stop()
        finally:
            self._waiter = None
            self._orchestrator = None
            await drop_database(self.admin_url, self._name)

    async def trigger(
        self,
        workflow: str,
        params: Mapping[str, Any] | None = None,
        *,
        logical_date: datetime | None = None,
    ) -> int:
        """Start a run of ``workflow`` as a manual trigger would; returns its id."""
        engine = self.orchestrator.engine
        assert engine is not None
        return await engine.trigger(workflow, params, actor="test", logical_date=logical_date)

    async def wait(self, run_id: int, *, timeout: float | None = None) -> RunResult:
        """The run once it has ended, with its tasks; ``TimeoutError`` if it has
        not ended within ``timeout`` seconds (default ``timeout_s``)."""
        assert self._waiter is not None
        states = await self._waiter.wait([run_id], timeout=timeout or self.timeout_s)
        return RunResult(run_id, states[run_id], await self.tasks(run_id))

    async def run(
        self,
        workflow: str,
        params: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> RunResult:
        """Trigger ``workflow`` and wait for the run to end."""
        return await self.wait(await self.trigger(workflow, params), timeout=timeout)

    async def wait_for_task(
        self, run_id: int, task_id: str, state: str, *, timeout: float | None = None
    ) -> TaskResult:
        """Task ``task_id`` of the run once it is in ``state`` (e.g. ``deferred``:
        then move the clock); ``TimeoutError`` after ``timeout`` seconds."""
        async with asyncio.timeout(timeout or self.timeout_s):
            while True:
                task = (await self.tasks(run_id)).get(task_id)
                if task is not None and task.state == state:
                    return task
                # Task states send no notification: look again shortly.
                await real_pause(TASK_POLL_S)

    async def tasks(self, run_id: int) -> dict[str, TaskResult]:
        """The tasks of a run as they are now, by task id."""
        db = self.orchestrator.db
        assert db is not None
        async with db.pool.acquire() as conn:
            rows = await conn.fetch(SQL.task_instances_of_run, run_id)
        return {
            r["task_id"]: TaskResult(
                state=r["state"],
                attempt=r["attempt"],
                output=None if r["output"] is None else orjson.loads(r["output"]),
                error=r["error"],
            )
            for r in rows
        }

    async def __aenter__(self) -> WorkflowTest:
        await self.start()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
