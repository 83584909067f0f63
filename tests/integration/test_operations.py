"""Operator actions against a real PostgreSQL: clear, mark and cancel of runs
run by real workers, each a guarded transition with actor and reason in the
transition log and the audit log."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from eventually import eventually
from suite_settings import suite_settings

from handlers import builtin_registry
from orchestrator import audit
from orchestrator.app import Orchestrator
from orchestrator.errors import OperationRefusedError, UnknownRunError, UnknownTaskError
from orchestrator.operations import cancel_run, clear_run, mark_task
from orchestrator.registry import HandlerRegistry
from orchestrator.run_reads import read_run
from orchestrator.run_waiter import wait_for_runs
from orchestrator.spec import RetryPolicy, TaskSpec, WorkflowSpec
from orchestrator.states import RunState, TaskState as T, is_legal, is_legal_run
from orchestrator.store import SQL
from orchestrator.views import show_run

ONCE = RetryPolicy(max_attempts=1)


class Switch:
    """Handlers that fail while their switch is on."""

    def __init__(self) -> None:
        self.failing: set[str] = set()
        self.calls: list[str] = []

    def registry(self) -> HandlerRegistry:
        reg = builtin_registry()

        async def flaky(ctx: Any) -> dict[str, Any]:
            self.calls.append(ctx.task_id)
            if ctx.task_id in self.failing:
                raise RuntimeError(f"{ctx.task_id} broke (attempt {ctx.attempt})")
            return {"task": ctx.task_id, "attempt": ctx.attempt}

        reg.register("flaky", flaky)
        return reg


def diamond(name: str = "diamond", **kw: Any) -> WorkflowSpec:
    return WorkflowSpec(
        name=name,
        tasks=(
            TaskSpec(id="a", handler="flaky", retry=ONCE),
            TaskSpec(id="b", handler="flaky", upstream=("a",), retry=ONCE),
            TaskSpec(id="c", handler="flaky", upstream=("a",), retry=ONCE, **kw),
            TaskSpec(id="d", handler="flaky", upstream=("b", "c"), retry=ONCE),
        ),
    )


async def rows(o: Orchestrator, run_id: int) -> dict[str, Any]:
    assert o.db is not None
    async with o.db.pool.acquire() as conn:
        found = await conn.fetch(SQL.task_instances_of_run, run_id)
    return {r["task_id"]: r for r in found}


async def states(o: Orchestrator, run_id: int) -> dict[str, str]:
    return {t: r["state"] for t, r in (await rows(o, run_id)).items()}


async def transitions(o: Orchestrator, run_id: int) -> list[Any]:
    assert o.db is not None
    async with o.db.pool.acquire() as conn:
        return list(await conn.fetch(SQL.transitions_of_run, run_id))


def assert_all_legal(steps: list[Any]) -> None:
    """Every logged move is an engine or operator edge."""
    for s in steps:
        if s["from_state"] is None:
            continue
        if s["task_id"] is None:
            assert is_legal_run(
                RunState(s["from_state"]), RunState(s["to_state"]), operator=True
            ), s
        else:
            assert is_legal(T(s["from_state"]), T(s["to_state"]), operator=True), dict(s)


async def ended(o: Orchestrator, run_id: int) -> RunState:
    assert o.db is not None
    return (await wait_for_runs(o.db, [run_id], timeout=20))[run_id]


async def test_clear_of_a_failed_diamond_reruns_only_the_failed_branch(db_url: str) -> None:
    switch = Switch()
    switch.failing.add("c")
    async with Orchestrator(
        suite_settings(), db_url, registry=switch.registry(), workflows=[diamond()]
    ) as o:
        assert o.engine is not None and o.db is not None
        run_id = await o.engine.trigger("diamond", {"day": "2026-11-30"}, actor="test")
        assert await ended(o, run_id) == RunState.FAILED
        assert await states(o, run_id) == {
            "a": "success",
            "b": "success",
            "c": "failed",
            "d": "upstream_failed",
        }
        b_output = (await rows(o, run_id))["b"]["output"]

        switch.failing.clear()
        switch.calls.clear()
        result = await clear_run(o.engine, run_id, actor="cli:ana", reason="provider fixed")
        assert result.cleared == ["c", "d"]
        assert result.reopened
        assert await ended(o, run_id) == RunState.SUCCESS
        assert sorted(switch.calls) == ["c", "d"]  # a and b are not run again
        after = await rows(o, run_id)
        assert after["b"]["output"] == b_output
        assert after["c"]["attempt"] == 2  # attempts keep counting
        assert orjson.loads(after["c"]["output"]) == {"task": "c", "attempt": 2}

        steps = await transitions(o, run_id)
        assert_all_legal(steps)
        cleared = [s for s in steps if s["to_state"] == "scheduled" and s["from_state"]]
        assert {(s["task_id"], s["from_state"]) for s in cleared} == {
            ("c", "failed"),
            ("d", "upstream_failed"),
        }
        assert all(s["actor"] == "cli:ana" for s in cleared)
        assert all(s["reason"].startswith("cleared by cli:ana: provider fixed") for s in cleared)
        run_moves = [(s["from_state"], s["to_state"]) for s in steps if s["task_id"] is None]
        assert run_moves == [
            (None, "running"),
            ("running", "failed"),
            ("failed", "running"),
            ("running", "success"),
        ]
        # The run keeps its params; the failed attempt and its error stay visible.
        detail = await read_run(o.db, run_id)
        assert detail is not None
        assert orjson.loads(detail.run.params) == {"day": "2026-11-30"}
        shown = await show_run(o.db, run_id)
        assert "c broke (attempt 1)" in shown
        [entry] = await audit.entries(o.db, run_id=run_id)
        assert (entry.actor, entry.action, entry.reason) == ("cli:ana", "clear", "provider fixed")
        assert entry.detail["tasks"] == ["c", "d"]


async def test_named_clear_of_a_succeeded_run_reopens_it_with_downstream(db_url: str) -> None:
    switch = Switch()
    async with Orchestrator(
        suite_settings(), db_url, registry=switch.registry(), workflows=[diamond()]
    ) as o:
        assert o.engine is not None
        run_id = await o.engine.trigger("diamond", actor="test")
        assert await ended(o, run_id) == RunState.SUCCESS
        switch.calls.clear()
        result = await clear_run(o.engine, run_id, tasks=["b"], downstream=True, actor="t")
        assert result.cleared == ["b", "d"]
        assert await ended(o, run_id) == RunState.SUCCESS
        assert sorted(switch.calls) == ["b", "d"]
        assert (await rows(o, run_id))["c"]["attempt"] == 1

        # Named without --downstream: only that task.
        switch.calls.clear()
        assert (await clear_run(o.engine, run_id, tasks=["a"], actor="t")).cleared == ["a"]
        assert await ended(o, run_id) == RunState.SUCCESS
        assert switch.calls == ["a"]
        assert_all_legal(await transitions(o, run_id))


async def test_clear_of_a_dead_lettered_task(db_url: str) -> None:
    spec = WorkflowSpec(
        name="dl",
        tasks=(
            TaskSpec(
                id="t",
                handler="flaky",
                retry=RetryPolicy(max_attempts=2, initial_delay_s=0.01, jitter=0, dead_letter=True),
            ),
            TaskSpec(id="after", handler="flaky", upstream=("t",)),
        ),
    )
    switch = Switch()
    switch.failing.add("t")
    async with Orchestrator(
        suite_settings(), db_url, registry=switch.registry(), workflows=[spec]
    ) as o:
        assert o.engine is not None
        run_id = await o.engine.trigger("dl", actor="test")
        assert await ended(o, run_id) == RunState.FAILED
        assert await states(o, run_id) == {"t": "dead_lettered", "after": "upstream_failed"}
        # Cleared while still broken: the task has its whole retry budget again.
        result = await clear_run(o.engine, run_id, failed_only=True, actor="t", reason="redrive")
        assert result.cleared == ["t", "after"]
        assert await ended(o, run_id) == RunState.FAILED
        assert (await rows(o, run_id))["t"]["attempt"] == 4
        assert switch.calls.count("t") == 4
        switch.failing.clear()
        await clear_run(o.engine, run_id, actor="t")
        assert await ended(o, run_id) == RunState.SUCCESS
        assert (await rows(o, run_id))["t"]["attempt"] == 5


async def test_clear_refusals_change_nothing(db_url: str) -> None:
    spec = WorkflowSpec(
        name="slow",
        tasks=(
            TaskSpec(id="wait", handler="sleep", inputs={"seconds": 30}),
            TaskSpec(id="after", handler="noop", upstream=("wait",)),
        ),
    )
    async with Orchestrator(
        suite_settings(), db_url, registry=builtin_registry(), workflows=[spec]
    ) as o:
        assert o.engine is not None and o.db is not None
        run_id = await o.engine.trigger("slow", actor="test")

        async def running() -> bool:
            return (await states(o, run_id))["wait"] == "running"

        await eventually(running, what="the task running")
        before = await transitions(o, run_id)
        with pytest.raises(OperationRefusedError, match="'wait' is running"):
            await clear_run(o.engine, run_id, tasks=["wait"], actor="t")
        with pytest.raises(OperationRefusedError, match="an attempt is running"):
            await mark_task(o.engine, run_id, "wait", "success", actor="t")
        with pytest.raises(OperationRefusedError, match="nothing to clear"):
            await clear_run(o.engine, run_id, actor="t")
        with pytest.raises(UnknownTaskError, match=r"run \d+ has no task 'nope'"):
            await clear_run(o.engine, run_id, tasks=["nope"], actor="t")
        with pytest.raises(UnknownRunError):
            await clear_run(o.engine, run_id + 1000, actor="t")
        assert await transitions(o, run_id) == before
        assert await audit.entries(o.db) == []
        await cancel_run(o.engine, run_id, actor="t", reason="done here")
        with pytest.raises(OperationRefusedError, match="already ended"):
            await cancel_run(o.engine, run_id, actor="t")


async def test_mark_success_redecides_downstream_and_the_run_succeeds(db_url: str) -> None:
    switch = Switch()
    switch.failing.add("c")
    async with Orchestrator(
        suite_settings(), db_url, registry=switch.registry(), workflows=[diamond()]
    ) as o:
        assert o.engine is not None and o.db is not None
        run_id = await o.engine.trigger("diamond", actor="test")
        assert await ended(o, run_id) == RunState.FAILED
        switch.calls.clear()
        result = await mark_task(
            o.engine,
            run_id,
            "c",
            "success",
            output={"rows": 3},
            actor="api:10.0.0.7",
            reason="fixed by hand",
        )
        assert result.redecided == ["d"]
        assert await ended(o, run_id) == RunState.SUCCESS
        assert switch.calls == ["d"]  # c is not run; d runs with c's marked output
        after = await rows(o, run_id)
        assert orjson.loads(after["c"]["output"]) == {"rows": 3}
        assert after["c"]["error"] is None
        steps = await transitions(o, run_id)
        assert_all_legal(steps)
        assert any(
            (s["task_id"], s["from_state"], s["to_state"], s["actor"])
            == ("c", "failed", "success", "api:10.0.0.7")
            for s in steps
        )
        [entry] = await audit.entries(o.db, run_id=run_id)
        assert (entry.action, entry.task_id, entry.reason) == ("mark", "c", "fixed by hand")

        # Mark failed: downstream that ran keeps its result; the run ends failed.
        await mark_task(o.engine, run_id, "a", "failed", actor="t")
        assert await ended(o, run_id) == RunState.FAILED


async def test_mark_skipped_of_a_queued_task_skips_its_downstream(db_url: str) -> None:
    # No worker: tasks stay queued until marked.
    switch = Switch()
    async with Orchestrator(
        suite_settings(worker_slots=0), db_url, registry=switch.registry(), workflows=[diamond()]
    ) as o:
        assert o.engine is not None
        run_id = await o.engine.trigger("diamond", actor="test")
        await mark_task(o.engine, run_id, "a", "skipped", actor="t")
        assert await states(o, run_id) == dict.fromkeys("abcd", "skipped")
        assert await ended(o, run_id) == RunState.SUCCESS
        with pytest.raises(OperationRefusedError, match="skipped already"):
            await mark_task(o.engine, run_id, "a", "skipped", actor="t")
        with pytest.raises(OperationRefusedError, match="not 'queued'"):
            await mark_task(o.engine, run_id, "a", "queued", actor="t")


async def test_cancel_skips_queued_tasks_and_a_late_result_is_refused(db_url: str) -> None:
    switch = Switch()
    async with Orchestrator(
        suite_settings(worker_slots=0), db_url, registry=switch.registry(), workflows=[diamond()]
    ) as o:
        assert o.engine is not None and o.db is not None
        run_id = await o.engine.trigger("diamond", actor="test")
        # Claimed by hand, as a worker would: the attempt is running.
        claimed, _ = await o.engine.claim("w1", 10)
        assert [c.task_id for c in claimed] == ["a"]
        result = await cancel_run(o.engine, run_id, actor="cli:bo", reason="wrong input")
        assert sorted(result.skipped) == ["a", "b", "c", "d"]
        assert await ended(o, run_id) == RunState.CANCELLED
        steps = await transitions(o, run_id)
        assert_all_legal(steps)
        skips = [s for s in steps if s["to_state"] == "skipped"]
        assert {s["reason"] for s in skips} == {"cancelled by cli:bo: wrong input"}
        assert ("a", "running") in {(s["task_id"], s["from_state"]) for s in skips}
        # The worker's heartbeat learns the attempt is no longer its own.
        assert await o.engine.heartbeat("w1", [(claimed[0].id, claimed[0].attempt)]) == [
            claimed[0].id
        ]
        from orchestrator.plan import Outcome

        late = await o.engine.complete(
            [
                Outcome(
                    id=claimed[0].id,
                    run_id=run_id,
                    task_id="a",
                    attempt=claimed[0].attempt,
                    owner="w1",
                    target=T.SUCCESS,
                    output="1",
                )
            ],
            actor="w1",
        )
        assert late.accepted == [] and len(late.rejected) == 1
        assert (await states(o, run_id))["a"] == "skipped"
        [entry] = await audit.entries(o.db, run_id=run_id, action="cancel")
        assert entry.detail["running"] == ["a"]

        # A cancelled run can be cleared: the skipped tasks run again.
        await clear_run(o.engine, run_id, actor="t")
        assert (await states(o, run_id))["a"] == "queued"
        assert_all_legal(await transitions(o, run_id))


async def test_cancel_racing_a_completion_one_wins(db_url: str) -> None:
    import asyncio

    from orchestrator.plan import Outcome

    spec = WorkflowSpec(name="one", tasks=(TaskSpec(id="t", handler="noop"),))
    async with Orchestrator(
        suite_settings(worker_slots=0), db_url, registry=builtin_registry(), workflows=[spec]
    ) as o:
        assert o.engine is not None and o.db is not None
        engine = o.engine
        for _ in range(5):
            run_id = await engine.trigger("one", actor="test")
            [c] = (await engine.claim("w", 1))[0]
            done = Outcome(
                id=c.id,
                run_id=run_id,
                task_id="t",
                attempt=c.attempt,
                owner="w",
                target=T.SUCCESS,
            )

            async def cancel(run_id: int = run_id) -> str:
                try:
                    await cancel_run(engine, run_id, actor="t")
                except OperationRefusedError:
                    return "refused"
                return "cancelled"

            completed, cancelled = await asyncio.gather(
                engine.complete([done], actor="w"), cancel()
            )
            state = await ended(o, run_id)
            if cancelled == "cancelled":
                assert state == RunState.CANCELLED and completed.rejected
                assert (await states(o, run_id))["t"] == "skipped"
            else:
                assert state == RunState.SUCCESS and completed.accepted
            assert_all_legal(await transitions(o, run_id))


async def test_clearing_many_runs_is_all_or_nothing(db_url: str) -> None:
    from orchestrator.operations import clear_runs

    switch = Switch()
    switch.failing.add("b")
    async with Orchestrator(
        suite_settings(), db_url, registry=switch.registry(), workflows=[diamond()]
    ) as o:
        assert o.engine is not None and o.db is not None
        failed = [await o.engine.trigger("diamond", actor="test") for _ in range(3)]
        assert set((await wait_for_runs(o.db, failed, timeout=20)).values()) == {RunState.FAILED}
        switch.failing.clear()
        ok = await o.engine.trigger("diamond", actor="test")
        assert await ended(o, ok) == RunState.SUCCESS
        before = await o.db.pool.fetchval("SELECT count(*) FROM transitions")
        with pytest.raises(OperationRefusedError, match=f"nothing to clear in run {ok}"):
            await clear_runs(o.engine, [*failed, ok], actor="t")
        assert await o.db.pool.fetchval("SELECT count(*) FROM transitions") == before
        results = await clear_runs(o.engine, failed, actor="cli:ana", reason="batch")
        assert [r.cleared for r in results] == [["b", "d"]] * 3
        done = await wait_for_runs(o.db, failed, timeout=20)
        assert set(done.values()) == {RunState.SUCCESS}
        entries = await audit.entries(o.db, action="clear")
        assert sorted(e.run_id or 0 for e in entries) == sorted(failed)
        assert {(e.actor, e.reason) for e in entries} == {("cli:ana", "batch")}


async def run_state(o: Orchestrator, run_id: int) -> str:
    assert o.db is not None
    state: str = await o.db.pool.fetchval("SELECT state::text FROM runs WHERE id = $1", run_id)
    return state


async def test_a_cleared_run_waits_queued_while_its_workflow_has_no_room(db_url: str) -> None:
    from orchestrator.plan import Outcome

    spec = WorkflowSpec(
        name="one_at_a_time",
        max_active_runs=1,
        tasks=(TaskSpec(id="a", handler="noop"), TaskSpec(id="b", handler="noop", upstream=("a",))),
    )
    async with Orchestrator(
        suite_settings(worker_slots=0), db_url, registry=builtin_registry(), workflows=[spec]
    ) as o:
        assert o.engine is not None and o.db is not None
        engine = o.engine

        async def finish(run_id: int, target: T) -> None:
            [c] = (await engine.claim("w", 1))[0]
            assert c.run_id == run_id
            await engine.complete(
                [Outcome(c.id, run_id, c.task_id, c.attempt, "w", target, error="boom")],
                actor="w",
            )

        first = await engine.trigger("one_at_a_time", actor="test")
        await finish(first, T.FAILED)
        assert await ended(o, first) == RunState.FAILED
        second = await engine.trigger("one_at_a_time", actor="test")
        assert await run_state(o, second) == "running"

        # The only slot is taken: the cleared run waits queued, its task scheduled.
        result = await clear_run(engine, first, actor="cli:ana", reason="fixed")
        assert (result.cleared, result.run_state) == (["a", "b"], RunState.QUEUED)
        assert await states(o, first) == {"a": "scheduled", "b": "scheduled"}
        assert (await engine.claim("w", 5))[0][0].run_id == second

        # The running run ends: the cleared one starts and its tasks are decided.
        async with o.db.pool.acquire() as conn:
            claimed = await conn.fetchval(
                "SELECT id FROM task_instances WHERE run_id = $1 AND state = 'running'", second
            )
        await engine.complete([Outcome(claimed, second, "a", 1, "w", T.SUCCESS)], actor="w")
        await finish(second, T.SUCCESS)
        assert await ended(o, second) == RunState.SUCCESS
        assert await run_state(o, first) == "running"
        await finish(first, T.SUCCESS)
        await finish(first, T.SUCCESS)
        assert await ended(o, first) == RunState.SUCCESS
        runs = [
            (s["from_state"], s["to_state"])
            for s in await transitions(o, first)
            if s["task_id"] is None
        ]
        assert runs[-3:] == [("failed", "queued"), ("queued", "running"), ("running", "success")]
        assert_all_legal(await transitions(o, first))
