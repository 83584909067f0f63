"""Concurrency limits and priority, against a real PostgreSQL with real
in-process workers: worker slots, named pools, per-task caps,
max_active_runs and claim order."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest
from eventually import eventually
from suite_settings import suite_settings

from handlers import builtin_registry
from orchestrator.app import Orchestrator
from orchestrator.clock import real_pause
from orchestrator.engine import Claimed, Engine, RunRequest
from orchestrator.registry import HandlerRegistry
from orchestrator.run_waiter import wait_for_runs
from orchestrator.spec import TaskSpec, WorkflowSpec
from orchestrator.states import RunState
from orchestrator.store import Database
from orchestrator.worker import FaultHook

pytestmark = pytest.mark.timeout(30)

DEADLINE_S = 10.0


settings = partial(suite_settings, worker_slots=10, poll_interval_s=0.05, lease_s=10.0)


@dataclass
class Gauge:
    """How many handlers of one kind run right now, and the most that ever did."""

    current: int = 0
    peak: int = 0
    done: int = 0
    full: asyncio.Event = field(default_factory=asyncio.Event)
    limit: int | None = None

    def enter(self) -> None:
        self.current += 1
        self.peak = max(self.peak, self.current)
        if self.limit is not None and self.current >= self.limit:
            self.full.set()

    def leave(self) -> None:
        self.current -= 1
        self.done += 1


def registry(**handlers: Callable[..., Awaitable[Any]]) -> HandlerRegistry:
    reg = builtin_registry()
    for name, fn in handlers.items():
        reg.register(name, fn)
    return reg


def holds(condition: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    """An ``eventually`` probe for in-process state."""

    async def probe() -> bool:
        return condition()

    return probe


async def wait_event(event: asyncio.Event) -> None:
    async with asyncio.timeout(DEADLINE_S):
        await event.wait()


async def all_succeed(db: Database, run_ids: Iterable[int]) -> None:
    ids = list(run_ids)
    states = await wait_for_runs(db, ids, timeout=20)
    assert states == dict.fromkeys(ids, RunState.SUCCESS)


def max_overlap(intervals: Iterable[tuple[int, int]]) -> int:
    """Most intervals open at once; ends sort before starts at the same point."""
    events = sorted(
        [(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
        key=lambda e: (e[0], e[1]),
    )
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


async def running_intervals(db: Database, sql_filter: str, *args: Any) -> list[tuple[int, int]]:
    """(id of the move to running, id of the move out of it) from the transition log.

    Transition ids are a valid clock here: a claim or start that an ending made
    possible is written after that ending committed, so it gets a larger id.
    """
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT id, run_id, task_id, from_state, to_state FROM transitions"
            f" WHERE {sql_filter} ORDER BY id",
            *args,
        )
    opened: dict[tuple[int, str | None], int] = {}
    out: list[tuple[int, int]] = []
    for r in rows:
        key = (r["run_id"], r["task_id"])
        if r["to_state"] == "running":
            assert key not in opened, f"{key} started twice"
            opened[key] = r["id"]
        elif r["from_state"] == "running":
            out.append((opened.pop(key), r["id"]))
    assert opened == {}, f"still running: {opened}"
    return out


# -- worker slots ------------------------------------------------------------------------


@pytest.mark.parametrize("slots", [1, 3])
async def test_a_worker_never_runs_more_handlers_than_its_slots(db_url: str, slots: int) -> None:
    gauge = Gauge(limit=slots)

    async def work(ctx: Any) -> None:
        gauge.enter()
        try:
            # The first `slots` attempts wait for each other, so the limit is reached.
            await wait_event(gauge.full)
            await real_pause(0.005)
        finally:
            gauge.leave()

    spec = WorkflowSpec(
        name="wide", tasks=tuple(TaskSpec(id=f"t{i}", handler="work") for i in range(4))
    )
    async with Orchestrator(
        settings(worker_slots=slots), db_url, registry=registry(work=work), workflows=[spec]
    ) as o:
        assert o.engine is not None and o.db is not None
        runs = await o.engine.create_runs([RunRequest("wide")] * 3, actor="test")
        await all_succeed(o.db, runs)
        assert gauge.done == 12
        assert gauge.peak == slots
        assert max_overlap(await running_intervals(o.db, "task_id IS NOT NULL")) == slots


# -- named pools -------------------------------------------------------------------------


async def test_a_named_pool_holds_across_two_workers(db_url: str, engine: Engine) -> None:
    pool = Gauge(limit=2)
    side = Gauge()
    release_pool = asyncio.Event()
    release_side = asyncio.Event()
    # Which worker started each pooled attempt, and how many each runs right now.
    owner_of: dict[int, str] = {}
    per_worker: Counter[str] = Counter()
    ran: dict[str, list[int]] = defaultdict(list)

    def hook(name: str) -> FaultHook:
        async def fault(point: str, c: Claimed) -> None:
            if point == "before_handler" and c.task_id == "w":
                owner_of[c.run_id] = name
                ran[name].append(c.run_id)

        return fault

    async def warehouse(ctx: Any) -> None:
        who = owner_of[ctx.run_id]
        pool.enter()
        per_worker[who] += 1
        try:
            await wait_event(release_pool)
            await real_pause(0.01)
        finally:
            per_worker[who] -= 1
            pool.leave()

    async def alongside(ctx: Any) -> int:
        side.enter()
        try:
            await wait_event(release_side)
            return pool.current
        finally:
            side.leave()

    pooled = WorkflowSpec(
        name="pooled", tasks=(TaskSpec(id="w", handler="warehouse", pool="warehouse"),)
    )
    plain = WorkflowSpec(name="plain", tasks=(TaskSpec(id="d", handler="alongside"),))
    reg = registry(warehouse=warehouse, alongside=alongside)
    # All runs exist before the first worker starts, so what it claims is known:
    # the 9 default-pool tasks first, then 1 pooled task into its last slot.
    await engine.register([pooled, plain])
    runs = await engine.create_runs(
        [RunRequest("plain")] * 9 + [RunRequest("pooled")] * 8, actor="test"
    )
    cfg = settings(worker_slots=10, pools={"warehouse": 2})

    def orchestrator(name: str) -> Orchestrator:
        return Orchestrator(
            cfg,
            engine.db.url,
            registry=reg,
            workflows=[pooled, plain],
            worker_name=name,
            fault=hook(name),
        )

    async with orchestrator("worker-a"):
        try:
            await eventually(
                holds(lambda: side.current == 9 and pool.current == 1),
                what="worker-a full: 9 default tasks and 1 pooled",
            )
            async with orchestrator("worker-b") as b:
                assert b.db is not None
                await eventually(holds(lambda: pool.current == 2), what="worker-b to fill the pool")
                assert dict(per_worker) == {"worker-a": 1, "worker-b": 1}
                # Default-pool work runs alongside a full pool.
                assert side.current == 9
                # A third claimer sees the pool full too: the count is the database's.
                assert (await engine.claim("probe", 10))[0] == []
                release_side.set()
                release_pool.set()
                await all_succeed(b.db, runs)
        finally:
            release_side.set()
            release_pool.set()
    assert pool.done == 8 and side.done == 9
    assert pool.peak == 2
    assert sorted(ran["worker-a"] + ran["worker-b"]) == runs[9:]
    assert ran["worker-a"] and ran["worker-b"]
    intervals = await running_intervals(engine.db, "task_id = 'w'")
    assert len(intervals) == 8
    assert max_overlap(intervals) == 2


# -- per-task cap ------------------------------------------------------------------------


async def test_max_concurrency_one_serialises_a_task_across_runs(db_url: str) -> None:
    capped = Gauge()
    free = Gauge()

    async def one_at_a_time(ctx: Any) -> None:
        capped.enter()
        try:
            # Longer than a poll interval: the worker tries to claim while it runs.
            await real_pause(0.1)
        finally:
            capped.leave()

    async def anything(ctx: Any) -> None:
        free.enter()
        try:
            await real_pause(0.02)
        finally:
            free.leave()

    spec = WorkflowSpec(
        name="serial",
        tasks=(
            TaskSpec(id="only", handler="one_at_a_time", max_concurrency=1),
            TaskSpec(id="free", handler="anything"),
        ),
    )
    reg = registry(one_at_a_time=one_at_a_time, anything=anything)
    async with Orchestrator(settings(), db_url, registry=reg, workflows=[spec]) as o:
        assert o.engine is not None and o.db is not None
        runs = await o.engine.create_runs([RunRequest("serial")] * 5, actor="test")
        await all_succeed(o.db, runs)
        assert capped.done == 5 and capped.peak == 1
        # The cap is per task: the uncapped sibling of every run ran together.
        assert free.peak == 5
        assert max_overlap(await running_intervals(o.db, "task_id = 'only'")) == 1


# -- max_active_runs ---------------------------------------------------------------------


@pytest.mark.parametrize("how", ["one-batch", "concurrent-triggers"])
async def test_max_active_runs_queues_the_extra_runs(db_url: str, how: str) -> None:
    hold = asyncio.Event()
    gauge = Gauge()

    async def step(ctx: Any) -> None:
        gauge.enter()
        try:
            await wait_event(hold)
        finally:
            gauge.leave()

    spec = WorkflowSpec(
        name="capped",
        max_active_runs=2,
        tasks=(TaskSpec(id="a", handler="step"), TaskSpec(id="b", handler="noop", upstream=("a",))),
    )
    async with Orchestrator(
        settings(), db_url, registry=registry(step=step), workflows=[spec]
    ) as o:
        assert o.engine is not None and o.db is not None
        engine = o.engine
        if how == "one-batch":
            runs = await engine.create_runs([RunRequest("capped")] * 6, actor="test")
        else:
            runs = list(await asyncio.gather(*(engine.trigger("capped") for _ in range(6))))
        try:
            await eventually(holds(lambda: gauge.current == 2), what="the first two runs")
            async with o.db.pool.acquire() as conn:
                rows = await conn.fetch(
                    "SELECT r.id, r.state::text AS state,"
                    " (SELECT count(*) FROM task_instances t WHERE t.run_id = r.id) AS tasks"
                    " FROM runs r WHERE r.id = ANY($1::bigint[]) ORDER BY r.id",
                    runs,
                )
            by_state = Counter(r["state"] for r in rows)
            assert by_state == {"running": 2, "queued": 4}
            # A queued run has no task instances until it starts.
            assert {r["tasks"] for r in rows if r["state"] == "queued"} == {0}
            assert {r["tasks"] for r in rows if r["state"] == "running"} == {2}
        finally:
            hold.set()
        await all_succeed(o.db, runs)
        async with o.db.pool.acquire() as conn:
            log = await conn.fetch(
                "SELECT id, run_id, task_id, from_state, to_state FROM transitions"
                " WHERE run_id = ANY($1::bigint[]) ORDER BY id",
                runs,
            )
        run_steps: dict[int, list[tuple[str | None, str]]] = defaultdict(list)
        first_task_step: dict[int, int] = {}
        started_at: dict[int, int] = {}
        for r in log:
            if r["task_id"] is None:
                run_steps[r["run_id"]].append((r["from_state"], r["to_state"]))
                if r["to_state"] == "running":
                    started_at[r["run_id"]] = r["id"]
            else:
                first_task_step.setdefault(r["run_id"], r["id"])
        queued_first = [i for i in runs if run_steps[i][0] == (None, "queued")]
        assert len(queued_first) == 4
        for i in runs:
            expected = [(None, "running"), ("running", "success")]
            if i in queued_first:
                expected = [(None, "queued"), ("queued", "running"), ("running", "success")]
            assert run_steps[i] == expected, i
            # No task of a run was created (or moved) before the run started.
            assert first_task_step[i] > started_at[i]
        intervals = await running_intervals(
            o.db, "task_id IS NULL AND run_id = ANY($1::bigint[])", runs
        )
        assert len(intervals) == 6
        assert max_overlap(intervals) == 2


# -- priority ----------------------------------------------------------------------------


async def test_higher_priority_tasks_run_first(db_url: str, engine: Engine) -> None:
    order: list[tuple[int, str]] = []

    async def record(ctx: Any) -> None:
        order.append((ctx.run_id, ctx.task_id))

    priorities = {"low": -5, "plain": 0, "high": 7, "top": 100, "mid": 3}
    spec = WorkflowSpec(
        name="prio",
        tasks=tuple(TaskSpec(id=t, handler="record", priority=p) for t, p in priorities.items()),
    )
    await engine.register([spec])
    runs = await engine.create_runs([RunRequest("prio")] * 3, actor="test")
    async with Orchestrator(
        settings(worker_slots=1),
        db_url,
        registry=registry(record=record),
        workflows=[spec],
        migrate=False,
    ) as o:
        assert o.db is not None
        await all_succeed(o.db, runs)
    # Priority first; among equals the older instance (earlier run, then spec order).
    spec_order = list(priorities)
    expected = sorted(
        ((r, t) for r in runs for t in priorities),
        key=lambda rt: (-priorities[rt[1]], rt[0], spec_order.index(rt[1])),
    )
    assert order == expected


async def test_priority_holds_between_pooled_and_plain_tasks(db_url: str, engine: Engine) -> None:
    order: list[str] = []

    async def record(ctx: Any) -> None:
        order.append(ctx.task_id)

    spec = WorkflowSpec(
        name="mixed",
        tasks=(
            TaskSpec(id="bulk1", handler="record"),
            TaskSpec(id="bulk2", handler="record"),
            TaskSpec(id="urgent", handler="record", pool="warehouse", priority=100),
            TaskSpec(id="capped", handler="record", max_concurrency=1, priority=50),
            TaskSpec(id="bulk3", handler="record"),
        ),
    )
    await engine.register([spec])
    runs = await engine.create_runs([RunRequest("mixed")], actor="test")
    async with Orchestrator(
        settings(worker_slots=1),
        db_url,
        registry=registry(record=record),
        workflows=[spec],
        migrate=False,
    ) as o:
        assert o.db is not None
        await all_succeed(o.db, runs)
    assert order == ["urgent", "capped", "bulk1", "bulk2", "bulk3"]


async def test_a_worker_runs_pooled_tasks_of_workflows_it_did_not_register(
    db_url: str, engine: Engine
) -> None:
    spec = WorkflowSpec(
        name="registered_elsewhere",
        tasks=(TaskSpec(id="w", handler="noop", pool="warehouse"),),
    )
    await engine.register([spec])
    run_id = await engine.trigger("registered_elsewhere")
    # Like a worker restarted (or deployed) separately from whoever registered the workflow.
    async with Orchestrator(settings(), db_url, registry=builtin_registry(), migrate=False) as o:
        assert o.db is not None
        states = await wait_for_runs(o.db, [run_id], timeout=1.5)
        assert states == {run_id: RunState.SUCCESS}
