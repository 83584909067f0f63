"""The triggerer ends time waits and timeouts, exactly once, across restarts,
crashes and rival triggerers, with a real PostgreSQL and a real worker.

Wake and timeout times are absolute timestamps taken from real time (the
handler's clock, the database's ``now()``). Most tests give the triggerer a
:class:`ManualClock` started at real time and move it far past those
moments, so nothing waits for real time to pass; one test uses the system
clock with a short real delay.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest
from eventually import eventually
from suite_settings import suite_settings
from triggerer_process import NAP

import handlers.sensors_time
from handlers import builtin_registry
from orchestrator.app import Orchestrator
from orchestrator.clock import SYSTEM_CLOCK, Clock, ManualClock, SystemClock
from orchestrator.context import TaskContext
from orchestrator.deferral import Defer
from orchestrator.engine import Engine, RunRequest
from orchestrator.errors import NonRetryableError
from orchestrator.registry import HandlerRegistry
from orchestrator.run_waiter import wait_for_runs
from orchestrator.spec import TaskSpec, TriggerRule, WorkflowSpec
from orchestrator.states import RunState
from orchestrator.store import Database
from orchestrator.triggerer import Triggerer

PROCESS_SCRIPT = Path(__file__).with_name("triggerer_process.py")
HOUR = 3600


def registry() -> HandlerRegistry:
    time_sensor = HandlerRegistry()
    time_sensor.register_module(handlers.sensors_time)
    return builtin_registry().merged(time_sensor)


def triggerer(o: Orchestrator, clock: Clock, name: str, **kw: Any) -> Triggerer:
    assert o.engine is not None, "start the orchestrator first"
    return Triggerer(o.engine, clock, name=name, **kw)


# Role "worker" only: the triggerers under test are the ones each test starts.
settings = partial(suite_settings, worker_slots=8, roles="worker")


def nap(name: str, **inputs: Any) -> WorkflowSpec:
    """One time sensor, then a task that reports when it woke."""
    return WorkflowSpec(
        name=name,
        tasks=(
            TaskSpec(id="nap", handler="sensor.time", inputs=inputs),
            TaskSpec(
                id="after",
                handler="echo",
                upstream=("nap",),
                inputs={"woke_at": "{{ upstream.nap.woke_at }}"},
            ),
        ),
    )


async def count(db: Database, sql: str, *args: Any) -> int:
    async with db.pool.acquire() as conn:
        value: int = await conn.fetchval(sql, *args)
    return value


async def waiting(db: Database) -> int:
    return await count(db, "SELECT count(*) FROM deferrals WHERE state = 'waiting'")


async def task_states(db: Database, run_id: int) -> dict[str, str]:
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT task_id, state::text AS state FROM task_instances WHERE run_id = $1", run_id
        )
    return {r["task_id"]: r["state"] for r in rows}


async def assert_each_wait_ended_once(db: Database, total: int, by: set[str]) -> None:
    """Every deferral resolved once, by one of ``by``, with exactly one
    transition out of ``deferred`` for its task, written by the same actor."""
    async with db.pool.acquire() as conn:
        deferrals = await conn.fetch("SELECT state, resolved_by FROM deferrals")
        moves = await conn.fetch(
            "SELECT run_id, task_id, attempt, count(*) AS n, min(actor) AS actor "
            "FROM transitions WHERE from_state = 'deferred' GROUP BY run_id, task_id, attempt"
        )
    assert len(deferrals) == total
    assert {d["state"] for d in deferrals} == {"resolved"}
    assert {d["resolved_by"] for d in deferrals} <= by
    assert len(moves) == total
    assert {m["n"] for m in moves} == {1}
    assert {m["actor"] for m in moves} <= by


# -- the handler -------------------------------------------------------------------


def ctx() -> TaskContext:
    return TaskContext(run_id=1, task_id="nap", attempt=1, workflow="w", params={}, upstream={})


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({}, "exactly one of 'until' or 'delay_s'"),
        ({"until": "2030-01-01T00:00:00Z", "delay_s": 5}, "exactly one of"),
        ({"until": "tomorrow"}, "'tomorrow' is not an ISO 8601 date-time"),
        ({"until": "2030-01-01T00:00:00"}, "needs a time zone offset"),
        ({"delay_s": "5"}, "delay_s must be a number of seconds, not '5'"),
        ({"delay_s": -1}, "delay_s must be zero or more"),
        ({"delay_s": 5, "timeout_s": 0}, "timeout_s must be positive"),
        ({"delay_s": 5, "on_timeout": "retry"}, "on_timeout must be 'failed' or 'skipped'"),
    ],
)
async def test_time_sensor_refuses_bad_inputs(inputs: dict[str, Any], message: str) -> None:
    with pytest.raises(NonRetryableError, match=message):
        await handlers.sensors_time.time_sensor(ctx(), **inputs)


async def test_time_sensor_defers_until_an_absolute_time_or_returns_if_past() -> None:
    with pytest.raises(Defer) as wait:
        await handlers.sensors_time.time_sensor(
            ctx(), until="2999-01-01T02:00:00+02:00", timeout_s=30, on_timeout="skipped"
        )
    assert wait.value.kind == "time"
    assert wait.value.wake_at == datetime(2999, 1, 1, tzinfo=UTC)
    assert (wait.value.timeout_s, wait.value.on_timeout) == (30, "skipped")
    past = await handlers.sensors_time.time_sensor(ctx(), until="2001-01-01T00:00:00Z")
    assert past["wake_at"] == "2001-01-01T00:00:00+00:00"


# -- waking --------------------------------------------------------------------------


async def test_a_time_sensor_wakes_when_the_clock_passes_wake_at(db_url: str) -> None:
    clock = ManualClock(SYSTEM_CLOCK.now())
    async with (
        Orchestrator(
            settings(), db_url, registry=registry(), workflows=[nap("nap", delay_s=120)]
        ) as o,
        triggerer(o, clock, "trig") as trig,
    ):
        assert o.engine is not None and o.db is not None
        run_id = await o.engine.trigger("nap", actor="test")

        async def armed() -> bool:
            return trig.armed == 1

        await eventually(armed, what="the wait armed through NOTIFY")
        assert await task_states(o.db, run_id) == {"nap": "deferred", "after": "scheduled"}
        async with o.db.pool.acquire() as conn:
            wake_at = await conn.fetchval("SELECT wake_at FROM deferrals")
        assert clock.now() + timedelta(seconds=110) < wake_at

        await clock.set(wake_at + timedelta(seconds=1))
        states = await wait_for_runs(o.db, [run_id], timeout=10)
        assert states[run_id] == RunState.SUCCESS
        async with o.db.pool.acquire() as conn:
            outputs = {
                r["task_id"]: orjson.loads(r["output"])
                for r in await conn.fetch(
                    "SELECT task_id, output::text FROM task_instances WHERE run_id = $1", run_id
                )
            }
            deferral = await conn.fetchrow("SELECT outcome, resolved_by FROM deferrals")
        assert outputs["nap"]["woke_at"] == (wake_at + timedelta(seconds=1)).isoformat()
        assert datetime.fromisoformat(outputs["nap"]["wake_at"]) == wake_at
        assert outputs["after"] == {"woke_at": outputs["nap"]["woke_at"]}
        assert dict(deferral) == {"outcome": "success", "resolved_by": "trig"}
        await assert_each_wait_ended_once(o.db, 1, {"trig"})


async def test_a_short_real_delay_on_the_system_clock(db_url: str) -> None:
    async with (
        Orchestrator(
            settings(), db_url, registry=registry(), workflows=[nap("quick", delay_s=0.3)]
        ) as o,
        triggerer(o, SystemClock(), "trig"),
    ):
        assert o.engine is not None and o.db is not None
        run_id = await o.engine.trigger("quick", actor="test")
        states = await wait_for_runs(o.db, [run_id], timeout=10)
        assert states[run_id] == RunState.SUCCESS
        async with o.db.pool.acquire() as conn:
            row = await conn.fetchrow("SELECT wake_at, resolved_at, created_at FROM deferrals")
        assert row["created_at"] < row["wake_at"] <= row["resolved_at"]


async def test_a_handler_deferring_mid_work_is_resumed_with_what_woke_it(db_url: str) -> None:
    clock = ManualClock(SYSTEM_CLOCK.now())
    reg = registry()
    calls: list[Any] = []

    async def two_step(ctx: TaskContext) -> dict[str, Any]:
        calls.append(ctx.resumed)
        if ctx.resumed is None:
            raise Defer(
                "time",
                "the second step",
                wake_at=SYSTEM_CLOCK.now() + timedelta(minutes=2),
                resume="handler",
            )
        return {"step": 2, "resumed": ctx.resumed}

    reg.register("two_step", two_step)
    spec = WorkflowSpec(name="steps", tasks=(TaskSpec(id="s", handler="two_step"),))
    async with (
        Orchestrator(settings(), db_url, registry=reg, workflows=[spec]) as o,
        triggerer(o, clock, "trig") as trig,
    ):
        assert o.engine is not None and o.db is not None
        run_id = await o.engine.trigger("steps", actor="test")

        async def armed() -> bool:
            return trig.armed == 1

        await eventually(armed, what="the wait armed")
        await clock.advance(timedelta(minutes=3))
        assert (await wait_for_runs(o.db, [run_id], timeout=10))[run_id] == RunState.SUCCESS
        assert calls[0] is None
        assert calls[1]["woke_at"] == clock.now().isoformat()
        async with o.db.pool.acquire() as conn:
            steps = [
                (r["from_state"], r["to_state"])
                for r in await conn.fetch(
                    "SELECT from_state, to_state FROM transitions "
                    "WHERE run_id = $1 AND task_id = 's' ORDER BY id",
                    run_id,
                )
            ]
        assert steps[-4:] == [
            ("running", "deferred"),
            ("deferred", "queued"),
            ("queued", "running"),
            ("running", "success"),
        ]


# -- timeouts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("on_timeout", "sensor", "downstream", "run"),
    [
        ("failed", "failed", "upstream_failed", RunState.FAILED),
        ("skipped", "skipped", "skipped", RunState.SUCCESS),
    ],
)
async def test_a_timeout_ends_the_wait_as_on_timeout_says(
    db_url: str, on_timeout: str, sensor: str, downstream: str, run: RunState
) -> None:
    clock = ManualClock(SYSTEM_CLOCK.now())
    spec = WorkflowSpec(
        name="deadline",
        tasks=(
            TaskSpec(
                id="nap",
                handler="sensor.time",
                inputs={"delay_s": HOUR, "timeout_s": 60, "on_timeout": on_timeout},
            ),
            TaskSpec(id="load", handler="noop", upstream=("nap",)),
            TaskSpec(
                id="cleanup",
                handler="noop",
                upstream=("nap",),
                trigger_rule=TriggerRule.ALL_DONE,
            ),
        ),
    )
    async with (
        Orchestrator(settings(), db_url, registry=registry(), workflows=[spec]) as o,
        triggerer(o, clock, "trig") as trig,
    ):
        assert o.engine is not None and o.db is not None
        run_id = await o.engine.trigger("deadline", actor="test")

        async def armed() -> bool:
            return trig.armed == 1

        await eventually(armed, what="the timeout armed")
        await clock.advance(120)
        assert (await wait_for_runs(o.db, [run_id], timeout=10))[run_id] == run
        assert await task_states(o.db, run_id) == {
            "nap": sensor,
            "load": downstream,
            "cleanup": "success",
        }
        async with o.db.pool.acquire() as conn:
            error = await conn.fetchval("SELECT error FROM task_instances WHERE task_id = 'nap'")
            reason = await conn.fetchval(
                "SELECT reason FROM transitions WHERE from_state = 'deferred'"
            )
            outcome = await conn.fetchval("SELECT outcome FROM deferrals")
        assert reason.startswith("timed out after 60s waiting for the time ")
        assert error == (reason if on_timeout == "failed" else None)
        assert outcome == on_timeout


# -- restarts and rivals -------------------------------------------------------------


async def test_waits_are_rearmed_from_the_database_after_a_restart(db_url: str) -> None:
    clock = ManualClock(SYSTEM_CLOCK.now())
    wake = nap("wake", delay_s=120)
    deadline = nap("deadline", delay_s=HOUR, timeout_s=200)
    async with Orchestrator(
        settings(), db_url, registry=registry(), workflows=[wake, deadline]
    ) as o:
        assert o.engine is not None and o.db is not None
        requests = [RunRequest("wake")] * 25 + [RunRequest("deadline")] * 25
        async with triggerer(o, clock, "first") as first:
            run_ids = await o.engine.create_runs(requests, actor="test")

            async def all_armed() -> bool:
                return first.armed == 50

            await eventually(all_armed, what="50 waits armed by the first triggerer")
        # Both the wake times and the timeouts pass while no triggerer runs.
        await clock.advance(1000)
        assert await waiting(o.db) == 50
        async with triggerer(o, clock, "second"):
            states = await wait_for_runs(o.db, run_ids, timeout=20)
        assert [states[i] for i in run_ids] == [RunState.SUCCESS] * 25 + [RunState.FAILED] * 25
        await assert_each_wait_ended_once(o.db, 50, {"second"})
        async with o.db.pool.acquire() as conn:
            outcomes = await conn.fetch("SELECT outcome, count(*) FROM deferrals GROUP BY 1")
        assert {r["outcome"]: r["count"] for r in outcomes} == {"success": 25, "failed": 25}


async def test_two_triggerers_end_each_wait_once(db_url: str) -> None:
    clock = ManualClock(SYSTEM_CLOCK.now())
    async with Orchestrator(
        settings(worker_slots=16), db_url, registry=registry(), workflows=[nap("race", delay_s=120)]
    ) as o:
        assert o.engine is not None and o.db is not None
        async with (
            triggerer(o, clock, "left") as left,
            triggerer(o, clock, "right") as right,
        ):
            run_ids = await o.engine.create_runs([RunRequest("race")] * 500, actor="test")

            async def both_armed() -> bool:
                return left.armed == right.armed == 500

            await eventually(both_armed, timeout=30, what="500 waits armed by both")
            await clock.advance(200)
            states = await wait_for_runs(o.db, run_ids, timeout=30)
            assert set(states.values()) == {RunState.SUCCESS}
            assert left.fired + right.fired >= 500
        await assert_each_wait_ended_once(o.db, 500, {"left", "right"})


@pytest.mark.timeout(60)
async def test_deferred_sensors_hold_no_worker_slot(db_url: str) -> None:
    clock = ManualClock(SYSTEM_CLOCK.now())
    ordinary = WorkflowSpec(name="ordinary", tasks=(TaskSpec(id="t", handler="noop"),))
    async with (
        Orchestrator(
            settings(worker_slots=2),
            db_url,
            registry=registry(),
            workflows=[nap("sensing", delay_s=120), ordinary],
        ) as o,
        triggerer(o, clock, "trig") as trig,
    ):
        assert o.engine is not None and o.db is not None
        # Sensors first: they are claimed before the ordinary tasks.
        sensors = await o.engine.create_runs([RunRequest("sensing")] * 500, actor="test")
        plain = await o.engine.create_runs([RunRequest("ordinary")] * 20, actor="test")
        states = await wait_for_runs(o.db, plain, timeout=30)
        assert set(states.values()) == {RunState.SUCCESS}
        assert await waiting(o.db) == 500
        in_state = "SELECT count(*) FROM task_instances WHERE state = $1"
        assert await count(o.db, in_state, "deferred") == 500
        assert await count(o.db, in_state, "running") == 0
        assert trig.fired == 0

        await clock.advance(200)
        states = await wait_for_runs(o.db, sensors, timeout=30)
        assert set(states.values()) == {RunState.SUCCESS}


async def test_memory_holds_only_waits_due_within_the_horizon(db_url: str) -> None:
    clock = ManualClock(SYSTEM_CLOCK.now())
    async with Orchestrator(
        settings(), db_url, registry=registry(), workflows=[nap("later", delay_s=300)]
    ) as o:
        assert o.engine is not None and o.db is not None
        run_ids = await o.engine.create_runs([RunRequest("later")] * 30, actor="test")

        db = o.db

        async def deferred() -> bool:
            return await waiting(db) == 30

        await eventually(deferred, what="30 deferred sensors")
        trig = triggerer(o, clock, "trig", horizon_s=60, max_armed=10, refresh_s=HOUR, poll_s=HOUR)
        async with trig:
            await trig.loaded.wait()
            assert trig.armed == 0  # all due in 5 minutes, beyond the horizon
            await clock.advance(270)  # now within the horizon: read, at most 10 at once

            async def ten_armed() -> bool:
                return trig.armed == 10

            await eventually(ten_armed, what="the first 10 waits armed")
            assert trig.fired == 0

            await clock.advance(100)

            async def all_ended() -> bool:
                assert trig.armed <= 10
                return await waiting(db) == 0

            await eventually(all_ended, what="all 30 waits ended")
        states = await wait_for_runs(o.db, run_ids, timeout=20)
        assert set(states.values()) == {RunState.SUCCESS}
        await assert_each_wait_ended_once(o.db, 30, {"trig"})


INSERT_WAIT = """
INSERT INTO deferrals (task_instance_id, run_id, task_id, attempt, kind, since, description,
                       wake_at, on_timeout, resume)
SELECT id, run_id, task_id, 1, 'time', now(), 'a test wait', now() + interval '1 minute',
       'failed', 'success'
FROM task_instances WHERE run_id = $1 AND task_id = 'nap'
RETURNING id
"""


async def test_a_wait_committed_after_a_newer_one_is_still_found(db_url: str) -> None:
    """Ids are taken at insert, not at commit: the triggerer remembers the ids
    it skipped and finds them once committed, without waiting for a reload."""
    clock = ManualClock(SYSTEM_CLOCK.now())
    async with Orchestrator(
        settings(worker_slots=0), db_url, workflows=[nap("manual", delay_s=60)]
    ) as o:
        assert o.engine is not None and o.db is not None
        older_run, newer_run = await o.engine.create_runs([RunRequest("manual")] * 2, actor="t")
        trig = triggerer(o, clock, "trig", refresh_s=HOUR, poll_s=HOUR)
        async with trig, o.db.pool.acquire() as slow, o.db.pool.acquire() as fast:
            await trig.loaded.wait()
            async with slow.transaction():
                older = await slow.fetchval(INSERT_WAIT, older_run)
                async with fast.transaction():
                    newer = await fast.fetchval(INSERT_WAIT, newer_run)
                    await fast.execute("SELECT pg_notify('orchestrator_deferrals', '')")
                assert older < newer

                async def newer_armed() -> bool:
                    return trig.armed == 1

                await eventually(newer_armed, what="the newer wait armed")
                await slow.execute("SELECT pg_notify('orchestrator_deferrals', '')")

            async def both_armed() -> bool:
                return trig.armed == 2

            await eventually(both_armed, what="the older wait armed once committed")


# -- a killed process ----------------------------------------------------------------


class Process:
    """``triggerer_process.py`` running, its output read as it comes."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        assert proc.stdout is not None and proc.stderr is not None
        self._pumps = [
            asyncio.create_task(self._pump(proc.stdout, self.stdout)),
            asyncio.create_task(self._pump(proc.stderr, self.stderr)),
        ]

    @staticmethod
    async def _pump(stream: asyncio.StreamReader, sink: list[str]) -> None:
        async for line in stream:
            sink.append(line.decode(errors="replace").rstrip("\n"))

    async def printed(self, line: str, timeout: float = 30) -> None:
        async def seen() -> bool:
            if self.proc.returncode is not None:
                raise AssertionError(f"{self.name} exited early:\n" + "\n".join(self.stderr))
            return line in self.stdout

        await eventually(seen, timeout=timeout, what=f"{self.name} to print {line!r}")

    async def reap(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()
        await asyncio.gather(*self._pumps)
        if self.stderr:
            print(f"--- stderr of {self.name} ---\n" + "\n".join(self.stderr[-40:]))


Spawn = Callable[..., Awaitable[Process]]


@pytest.fixture
async def spawn() -> AsyncIterator[Spawn]:
    started: list[Process] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}

    async def start(db_url: str, name: str, *args: str) -> Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(PROCESS_SCRIPT),
            "--db",
            db_url,
            "--name",
            name,
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        process = Process(proc, name)
        started.append(process)
        await process.printed(f"READY {name}")
        return process

    try:
        yield start
    finally:
        await asyncio.gather(*(p.reap() for p in started))


@pytest.mark.timeout(90)
async def test_a_killed_triggerer_process_loses_no_wait(
    db_url: str, db: Database, engine: Engine, spawn: Spawn
) -> None:
    first = await spawn(db_url, "first")
    until = (SYSTEM_CLOCK.now() + timedelta(minutes=10)).isoformat()
    run_ids = await engine.create_runs(
        [RunRequest(NAP.name, {"until": until})] * 1000, actor="test"
    )
    await first.printed("ARMED 1000")
    first.proc.send_signal(signal.SIGKILL)
    assert await first.proc.wait() == -signal.SIGKILL
    assert await waiting(db) == 1000
    assert await count(db, "SELECT count(*) FROM task_instances WHERE state <> 'deferred'") == 0

    # The new process's clock is an hour ahead: every wait is due for it.
    await spawn(db_url, "second", "--clock-offset", str(HOUR))
    states = await wait_for_runs(db, run_ids, timeout=60)
    assert set(states.values()) == {RunState.SUCCESS}
    await assert_each_wait_ended_once(db, 1000, {"second"})
    async with db.pool.acquire() as conn:
        moves = await conn.fetch(
            "SELECT from_state, to_state, count(*) AS n FROM transitions "
            "WHERE task_id = 'nap' GROUP BY 1, 2"
        )
    assert {(m["from_state"], m["to_state"]): m["n"] for m in moves} == {
        (None, "queued"): 1000,
        ("queued", "running"): 1000,
        ("running", "deferred"): 1000,
        ("deferred", "success"): 1000,
    }
