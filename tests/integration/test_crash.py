"""Crash and freeze recovery with real worker processes and a real PostgreSQL.

Each worker is ``worker_process.py`` in its own OS process. Its handler writes
one ``executions`` row per attempt it runs, so the tests can check what really
ran, and when, against what the engine recorded in ``transitions``.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from eventually import eventually

from orchestrator.app import Orchestrator
from orchestrator.engine import RunRequest
from orchestrator.run_waiter import wait_for_runs
from orchestrator.settings import Settings
from orchestrator.spec import RetryPolicy, TaskSpec, WorkflowSpec
from orchestrator.states import RunState

WORKER_SCRIPT = Path(__file__).with_name("worker_process.py")
FAST_RETRY = RetryPolicy(max_attempts=3, initial_delay_s=0.01, max_delay_s=0.05, jitter=0)

EXECUTIONS_DDL = """
CREATE TABLE executions (
    id          bigserial PRIMARY KEY,
    run_id      bigint NOT NULL,
    task_id     text NOT NULL,
    attempt     int NOT NULL,
    worker      text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    ended_at    timestamptz
)
"""


def process_state(pid: int) -> str:
    """The state letter of ``/proc/PID/stat`` (R, S, T, Z, ...); reading /proc never blocks."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


class WorkerProcess:
    """A running ``worker_process.py`` whose stdout and stderr are read as they come."""

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
        # Read everything as it comes: a full pipe would block the worker.
        async for line in stream:
            sink.append(line.decode(errors="replace").rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return "\n".join(self.stderr)

    async def ready(self, timeout: float = 30) -> None:
        def seen() -> bool:
            if self.proc.returncode is not None:
                raise AssertionError(
                    f"worker {self.name} exited with {self.proc.returncode} before READY:\n"
                    + self.log()
                )
            return f"READY {self.name}" in self.stdout

        async def probe() -> bool:
            return seen()

        await eventually(probe, timeout=timeout, what=f"READY {self.name}")

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    async def stopped(self) -> bool:
        """True once the kernel shows the process stopped (SIGSTOP took effect)."""
        return process_state(self.pid) == "T"

    async def wait_exit(self, timeout: float) -> int:
        async with asyncio.timeout(timeout):
            code = await self.proc.wait()
            await asyncio.gather(*self._pumps)
        return code

    async def reap(self) -> None:
        """Teardown: make sure nothing outlives the test, whatever happened."""
        if self.proc.returncode is None:
            self.proc.kill()  # SIGKILL ends a stopped process too
        await self.proc.wait()
        await asyncio.gather(*self._pumps)
        if self.stderr:
            print(f"--- stderr of {self.name} (last 40 lines) ---")
            print("\n".join(self.stderr[-40:]))


Spawn = Callable[..., Awaitable[WorkerProcess]]


@pytest.fixture
async def spawn() -> AsyncIterator[Spawn]:
    """Start worker processes; every one is killed and reaped at teardown."""
    started: list[WorkerProcess] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}

    async def start(db_url: str, name: str, **opts: float) -> WorkerProcess:
        args = [str(WORKER_SCRIPT), "--db", db_url, "--name", name]
        for key, value in opts.items():
            args += [f"--{key}", str(value)]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        worker = WorkerProcess(proc, name)
        started.append(worker)
        await worker.ready()
        return worker

    try:
        yield start
    finally:
        await asyncio.gather(*(w.reap() for w in started))


async def backends(pool: asyncpg.Pool, *names: str, active_only: bool = False) -> int:
    n: int = await pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = ANY($1::text[])"
        " AND (NOT $2 OR state = 'active')",
        list(names),
        active_only,
    )
    return n


async def in_progress(pool: asyncpg.Pool, worker: str) -> int:
    n: int = await pool.fetchval(
        "SELECT count(*) FROM executions WHERE worker = $1 AND ended_at IS NULL", worker
    )
    return n


async def kill_mid_task(pool: asyncpg.Pool, victim: WorkerProcess) -> datetime:
    """SIGKILL ``victim`` while at least one of its handlers is mid-work, and
    return a database time at which it was certainly dead.

    To know it was mid-task, the process is frozen first, its handler
    connections are left to finish what they already sent, and only then are
    its unfinished executions counted: if there are none it is thawed and
    tried again. The freeze lasts milliseconds, far below the lease.
    """

    async def try_once() -> bool:
        victim.send(signal.SIGSTOP)
        await eventually(victim.stopped, timeout=5, what=f"{victim.name} stopped")

        async def handlers_quiet() -> bool:
            return await backends(pool, f"{victim.name}-handlers", active_only=True) == 0

        await eventually(handlers_quiet, timeout=5, what=f"{victim.name} handlers quiet")
        if await in_progress(pool, victim.name):
            victim.send(signal.SIGKILL)
            return True
        victim.send(signal.SIGCONT)
        return False

    await eventually(try_once, timeout=20, what=f"{victim.name} killed mid-task")
    assert await victim.wait_exit(10) == -signal.SIGKILL

    async def gone() -> bool:
        return await backends(pool, victim.name, f"{victim.name}-handlers") == 0

    # Once its connections are closed nothing the victim sent can still land.
    await eventually(gone, timeout=10, what=f"{victim.name}'s connections closed")
    dead_at: datetime = await pool.fetchval("SELECT clock_timestamp()")
    return dead_at


def chain(name: str, length: int) -> WorkflowSpec:
    """``length`` tasks in a row; each sleeps ``params.ms[i]`` milliseconds."""
    return WorkflowSpec(
        name=name,
        tasks=tuple(
            TaskSpec(
                id=f"s{i}",
                handler="work",
                upstream=(f"s{i - 1}",) if i else (),
                inputs={"ms": f"{{{{ params.ms[{i}] }}}}"},
                retry=FAST_RETRY,
                timeout_s=60,
            )
            for i in range(length)
        ),
    )


async def fetch_all(pool: asyncpg.Pool, run_ids: list[int]) -> dict[str, list[asyncpg.Record]]:
    return {
        "executions": await pool.fetch(
            "SELECT run_id, task_id, attempt, worker, started_at, ended_at FROM executions"
            " ORDER BY started_at, id"
        ),
        "tasks": await pool.fetch(
            "SELECT run_id, task_id, state::text AS state, attempt, output::text AS output"
            " FROM task_instances WHERE run_id = ANY($1::bigint[])",
            run_ids,
        ),
        "transitions": await pool.fetch(
            "SELECT run_id, task_id, from_state, to_state, attempt, actor, reason, at"
            " FROM transitions WHERE run_id = ANY($1::bigint[]) AND task_id IS NOT NULL"
            " ORDER BY id",
            run_ids,
        ),
    }


Key = tuple[int, str]


def check_crash_history(
    data: dict[str, list[asyncpg.Record]],
    *,
    victim: str,
    survivor: str,
    dead_at: datetime,
    expected_tasks: int,
) -> dict[str, int]:
    """Every assertion of the crash test on what was recorded; returns counts."""
    tasks = {(r["run_id"], r["task_id"]): r for r in data["tasks"]}
    assert len(tasks) == expected_tasks
    assert {r["state"] for r in tasks.values()} == {"success"}

    runs: dict[Key, list[asyncpg.Record]] = defaultdict(list)
    seen: set[tuple[int, str, int]] = set()
    for e in data["executions"]:
        attempt_key = (e["run_id"], e["task_id"], e["attempt"])
        assert attempt_key not in seen, f"attempt {attempt_key} was executed twice"
        seen.add(attempt_key)
        runs[(e["run_id"], e["task_id"])].append(e)
        assert e["worker"] in (victim, survivor)
        if e["worker"] == survivor:
            assert e["ended_at"] is not None, f"survivor never finished {attempt_key}"
    assert set(runs) <= set(tasks)

    # No two attempts of one task ever ran at the same time: each one started
    # after the previous one ended (or after the victim was dead).
    for key, execs in runs.items():
        busy_until: datetime | None = None
        for e in sorted(execs, key=lambda e: e["started_at"]):
            if busy_until is not None:
                assert e["started_at"] >= busy_until, (
                    f"{key} attempt {e['attempt']} by {e['worker']} started at "
                    f"{e['started_at']} while an earlier attempt ran until {busy_until}"
                )
            end = e["ended_at"] or dead_at
            busy_until = end if busy_until is None else max(busy_until, end)
        attempts = [e["attempt"] for e in sorted(execs, key=lambda e: e["started_at"])]
        assert attempts == sorted(attempts), f"{key}: attempts ran out of order {attempts}"

    claims: dict[Key, dict[int, str]] = defaultdict(dict)
    successes: dict[Key, list[asyncpg.Record]] = defaultdict(list)
    expired: dict[Key, dict[int, asyncpg.Record]] = defaultdict(dict)
    for t in data["transitions"]:
        key = (t["run_id"], t["task_id"])
        if t["to_state"] == "running":
            assert t["reason"] == "claimed"
            assert t["attempt"] not in claims[key], f"{key} attempt {t['attempt']} claimed twice"
            claims[key][t["attempt"]] = t["actor"]
        elif t["from_state"] == "running":
            if t["to_state"] == "success":
                successes[key].append(t)
            else:
                # The handler never fails: the only other way out is a lost lease.
                assert (t["to_state"], t["reason"]) == ("up_for_retry", "lease expired"), t
                assert t["actor"] == f"reaper:{survivor}", t
                expired[key][t["attempt"]] = t

    unstarted = 0
    for key, task in tasks.items():
        assert len(successes[key]) == 1, f"{key} succeeded {len(successes[key])} times"
        won = successes[key][0]
        output = orjson.loads(task["output"])
        assert won["attempt"] == task["attempt"] == output["attempt"]
        assert won["actor"] == output["worker"] == claims[key][task["attempt"]]
        assert sorted(claims[key]) == list(range(1, task["attempt"] + 1))
        assert sorted(expired[key]) == list(range(1, task["attempt"]))
        executed = {e["attempt"]: e for e in runs[key]}
        for attempt, owner in claims[key].items():
            # Only first attempts ran before the kill; every retry is the survivor's.
            assert attempt == 1 or owner == survivor, (key, attempt, owner)
            if attempt in executed:
                assert executed[attempt]["worker"] == owner
            else:
                # Claimed by the victim, which died before the handler began.
                assert owner == victim and attempt in expired[key], (key, attempt, owner)
                unstarted += 1
        for attempt, lost in expired[key].items():
            assert claims[key][attempt] == victim, f"{key}: survivor lost a lease"
            assert lost["at"] >= dead_at, f"{key}: lease taken from a live worker"
        # attempts = executions + attempts lost before their handler started
        missing = [a for a in claims[key] if a not in executed]
        assert task["attempt"] == len(executed) + len(missing)
        assert executed[task["attempt"]]["ended_at"] is not None

    # The victim died mid-task, and what it was running was taken back after
    # its lease ran out and then succeeded at attempt 2 on the survivor.
    cut_short = [e for e in data["executions"] if e["worker"] == victim and e["ended_at"] is None]
    assert cut_short, "the victim was not killed mid-task"
    for e in cut_short:
        key = (e["run_id"], e["task_id"])
        assert e["attempt"] == 1
        assert e["attempt"] in expired[key], f"{key}: no lease expiry after the kill"
        assert tasks[key]["attempt"] == 2
        assert successes[key][0]["actor"] == survivor
        retry = next(r for r in runs[key] if r["attempt"] == 2)
        assert retry["worker"] == survivor
        assert retry["started_at"] >= expired[key][1]["at"]
    return {
        "executions": len(data["executions"]),
        "by_victim": sum(1 for e in data["executions"] if e["worker"] == victim),
        "cut_short": len(cut_short),
        "lease_expired": sum(len(v) for v in expired.values()),
        "claimed_not_started": unstarted,
    }


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_sigkill_mid_task_loses_nothing_and_runs_no_attempt_twice(
    db_url: str, spawn: Spawn
) -> None:
    runs, length, lease = 200, 5, 3.0
    spec = chain("crash_chain", length)
    opts: dict[str, float] = {
        "slots": 8,
        "lease": lease,
        "heartbeat": 0.5,
        "reaper": 0.5,
        "poll": 0.2,
    }
    async with Orchestrator(
        Settings(worker_slots=0, lease_s=lease), db_url, workflows=[spec], migrate=False
    ) as orch:
        assert orch.db is not None and orch.engine is not None
        pool = orch.db.pool
        await pool.execute(EXECUTIONS_DDL)
        victim, survivor = await asyncio.gather(
            spawn(db_url, "victim", **opts), spawn(db_url, "survivor", **opts)
        )
        rng = random.Random(20260201)
        run_ids = await orch.engine.create_runs(
            [
                RunRequest("crash_chain", {"ms": [rng.randint(2, 50) for _ in range(length)]})
                for _ in range(runs)
            ],
            actor="test",
        )

        async def victim_busy() -> bool:
            row = await pool.fetchrow(
                "SELECT count(*) FILTER (WHERE ended_at IS NOT NULL) AS done,"
                " count(*) FILTER (WHERE ended_at IS NULL) AS running"
                " FROM executions WHERE worker = $1",
                victim.name,
            )
            assert row is not None
            return bool(row["done"] >= 100 and row["running"] > 0)

        await eventually(victim_busy, timeout=30, what="the victim to be busy")
        dead_at = await kill_mid_task(pool, victim)

        states = await wait_for_runs(orch.db, run_ids, timeout=60)
        assert states == dict.fromkeys(run_ids, RunState.SUCCESS)
        counts = check_crash_history(
            await fetch_all(pool, run_ids),
            victim=victim.name,
            survivor=survivor.name,
            dead_at=dead_at,
            expected_tasks=runs * length,
        )
        print("crash test:", counts)

        survivor.send(signal.SIGTERM)
        assert await survivor.wait_exit(20) == 0
        assert f"STOPPED {survivor.name}" in survivor.stdout


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_frozen_worker_late_result_is_rejected(db_url: str, spawn: Spawn) -> None:
    lease = 1.5
    spec = WorkflowSpec(
        name="frozen",
        tasks=(
            TaskSpec(
                id="slow", handler="work", inputs={"ms": 3500}, retry=FAST_RETRY, timeout_s=60
            ),
        ),
    )
    opts: dict[str, float] = {
        "slots": 2,
        "lease": lease,
        "heartbeat": 0.5,
        "reaper": 0.5,
        "poll": 0.2,
    }
    async with Orchestrator(
        Settings(worker_slots=0, lease_s=lease), db_url, workflows=[spec], migrate=False
    ) as orch:
        assert orch.db is not None and orch.engine is not None
        pool = orch.db.pool
        await pool.execute(EXECUTIONS_DDL)
        a = await spawn(db_url, "frozen-a", **opts)
        run_id = await orch.engine.trigger("frozen", actor="test")

        async def execution_of(worker: str) -> Any:
            return await pool.fetchrow(
                "SELECT attempt, started_at, ended_at FROM executions"
                " WHERE run_id = $1 AND worker = $2",
                run_id,
                worker,
            )

        started = await eventually(lambda: execution_of(a.name), what="A to start the task")
        assert started["attempt"] == 1
        a.send(signal.SIGSTOP)
        await eventually(a.stopped, timeout=5, what="A stopped")
        b = await spawn(db_url, "frozen-b", **opts)

        async def task_row() -> Any:
            return await pool.fetchrow(
                "SELECT state::text AS state, attempt, output::text AS output"
                " FROM task_instances WHERE run_id = $1 AND task_id = 'slow'",
                run_id,
            )

        async def done_by_b() -> bool:
            row = await task_row()
            return bool(row["state"] == "success")

        await eventually(done_by_b, timeout=30, what="B to finish the task")
        assert not (await execution_of(a.name))["ended_at"], "A ran on while stopped"
        a.send(signal.SIGCONT)

        async def a_finished() -> bool:
            row = await execution_of(a.name)
            return row["ended_at"] is not None

        await eventually(a_finished, timeout=15, what="A's handler to finish")
        rejected = (
            f"late result rejected: run {run_id} task slow attempt 1 "
            f"is no longer leased to {a.name}"
        )

        async def a_logged() -> bool:
            return rejected in a.log()

        await eventually(a_logged, timeout=15, what="A to log the rejection")

        states = await wait_for_runs(orch.db, [run_id], timeout=10)
        assert states == {run_id: RunState.SUCCESS}
        row = await task_row()
        assert (row["state"], row["attempt"]) == ("success", 2)
        assert orjson.loads(row["output"]) == {"worker": b.name, "attempt": 2}
        steps = [
            (t["from_state"], t["to_state"], t["attempt"], t["actor"], t["reason"])
            for t in await pool.fetch(
                "SELECT from_state, to_state, attempt, actor, reason FROM transitions"
                " WHERE run_id = $1 AND task_id = 'slow' ORDER BY id",
                run_id,
            )
        ]
        assert steps == [
            (None, "queued", 0, "test", "created"),
            ("queued", "running", 1, a.name, "claimed"),
            ("running", "up_for_retry", 1, f"reaper:{b.name}", "lease expired"),
            ("up_for_retry", "running", 2, b.name, "claimed"),
            ("running", "success", 2, b.name, "handler returned"),
        ]
        execs = await pool.fetch(
            "SELECT worker, attempt FROM executions WHERE run_id = $1 ORDER BY attempt", run_id
        )
        assert [(e["worker"], e["attempt"]) for e in execs] == [(a.name, 1), (b.name, 2)]

        a.send(signal.SIGTERM)
        b.send(signal.SIGTERM)
        codes = await asyncio.gather(a.wait_exit(20), b.wait_exit(20))
        assert list(codes) == [0, 0], a.log() + "\n" + b.log()
        assert f"STOPPED {a.name}" in a.stdout and f"STOPPED {b.name}" in b.stdout
