"""Runs end to end against a real PostgreSQL: workers, retries, trigger rules."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from suite_settings import suite_settings

from handlers import builtin_registry
from orchestrator.app import Orchestrator
from orchestrator.errors import UnknownWorkflowError
from orchestrator.run_waiter import RunWaiter, wait_for_runs
from orchestrator.spec import RetryPolicy, TaskSpec, TriggerRule, WorkflowSpec
from orchestrator.states import RunState
from orchestrator.store import SQL

FAST_RETRY = RetryPolicy(max_attempts=3, initial_delay_s=0.01, max_delay_s=0.05, jitter=0)


settings = suite_settings


def wf(name: str, *tasks: TaskSpec, **kw: Any) -> WorkflowSpec:
    return WorkflowSpec(name=name, tasks=tasks, **kw)


async def task_rows(orch: Orchestrator, run_id: int) -> dict[str, Any]:
    assert orch.db is not None
    async with orch.db.pool.acquire() as conn:
        rows = await conn.fetch(SQL.task_instances_of_run, run_id)
    return {r["task_id"]: r for r in rows}


async def timeline(orch: Orchestrator, run_id: int) -> list[tuple[str | None, str | None, str]]:
    assert orch.db is not None
    async with orch.db.pool.acquire() as conn:
        rows = await conn.fetch(SQL.transitions_of_run, run_id)
    return [(r["task_id"], r["from_state"], r["to_state"]) for r in rows]


async def run_to_end(orch: Orchestrator, workflow: str, **params: Any) -> tuple[int, RunState]:
    assert orch.engine is not None and orch.db is not None
    run_id = await orch.engine.trigger(workflow, params, actor="test")
    states = await wait_for_runs(orch.db, [run_id], timeout=20)
    return run_id, states[run_id]


async def test_diamond_runs_in_order_with_outputs_and_timeline(db_url: str) -> None:
    spec = wf(
        "diamond",
        TaskSpec(id="a", handler="echo", inputs={"n": "{{ params.n }}"}),
        TaskSpec(id="b", handler="echo", upstream=("a",), inputs={"from_a": "{{ upstream.a.n }}"}),
        TaskSpec(id="c", handler="echo", upstream=("a",), inputs={"x": "c-{{ params.n }}"}),
        TaskSpec(
            id="d",
            handler="echo",
            upstream=("b", "c"),
            inputs={"b": "{{ upstream.b }}", "c": "{{ upstream.c.x }}"},
        ),
    )
    async with Orchestrator(settings(), db_url, registry=builtin_registry(), workflows=[spec]) as o:
        run_id, state = await run_to_end(o, "diamond", n=7)
        assert state == RunState.SUCCESS
        rows = await task_rows(o, run_id)
        assert {t: r["state"] for t, r in rows.items()} == dict.fromkeys("abcd", "success")

        assert orjson.loads(rows["d"]["output"]) == {"b": {"from_a": 7}, "c": "c-7"}
        steps = await timeline(o, run_id)
        # Every task: created -> ... -> running -> success, with d last to start.
        for t in "abcd":
            assert [s for s in steps if s[0] == t][-2:] == [
                (t, "queued", "running"),
                (t, "running", "success"),
            ]
        d_start = steps.index(("d", "queued", "running"))
        assert steps.index(("b", "running", "success")) < d_start
        assert steps.index(("c", "running", "success")) < d_start
        assert steps[0] == (None, None, "running")
        assert steps[-1] == (None, "running", "success")


async def test_retry_then_success_keeps_idempotency_key(db_url: str) -> None:
    seen: list[tuple[int, str]] = []
    reg = builtin_registry()

    async def flaky(ctx: Any) -> dict[str, int]:
        seen.append((ctx.attempt, ctx.idempotency_key))
        if ctx.attempt < 3:
            raise RuntimeError("transient")
        return {"attempt": ctx.attempt}

    reg.register("flaky", flaky)
    spec = wf("retrying", TaskSpec(id="t", handler="flaky", retry=FAST_RETRY))
    async with Orchestrator(settings(), db_url, registry=reg, workflows=[spec]) as o:
        run_id, state = await run_to_end(o, "retrying")
        assert state == RunState.SUCCESS
        assert [a for a, _ in seen] == [1, 2, 3]
        assert len({k for _, k in seen}) == 1
        steps = [s for s in await timeline(o, run_id) if s[0] == "t"]
        assert steps.count(("t", "running", "up_for_retry")) == 2
        assert ("t", "up_for_retry", "running") in steps


@pytest.mark.parametrize(
    ("retry", "inputs", "final", "attempts"),
    [
        (FAST_RETRY, {}, "failed", 3),
        (FAST_RETRY.model_copy(update={"dead_letter": True}), {}, "dead_lettered", 3),
        (FAST_RETRY, {"non_retryable": True}, "failed", 1),
        (FAST_RETRY.model_copy(update={"non_retryable": ("TaskError",)}), {}, "failed", 1),
    ],
)
async def test_failures_follow_the_retry_policy(
    db_url: str, retry: RetryPolicy, inputs: dict[str, Any], final: str, attempts: int
) -> None:
    spec = wf(
        "failing",
        TaskSpec(id="t", handler="fail", retry=retry, inputs=inputs),
        TaskSpec(id="after", handler="noop", upstream=("t",)),
    )
    async with Orchestrator(settings(), db_url, registry=builtin_registry(), workflows=[spec]) as o:
        run_id, state = await run_to_end(o, "failing")
        assert state == RunState.FAILED
        rows = await task_rows(o, run_id)
        assert rows["t"]["state"] == final
        assert rows["t"]["attempt"] == attempts
        assert "failed on purpose" in rows["t"]["error"]
        assert rows["after"]["state"] == "upstream_failed"


async def test_a_handler_that_cannot_take_its_inputs_fails_without_retries(db_url: str) -> None:
    reg = builtin_registry()

    async def greet(ctx: Any, *, name: str) -> str:
        return f"hello {name}"

    def halve(ctx: Any, *, n: Any) -> Any:  # a sync handler, run in a thread
        return n / 2  # TypeError inside the handler when n is null: may be transient

    reg.register("greet", greet)
    reg.register("halve", halve)
    spec = wf(
        "mistyped",
        TaskSpec(id="typo", handler="greet", inputs={"nmae": "Ada"}, retry=FAST_RETRY),
        TaskSpec(id="missing", handler="halve", inputs={}, retry=FAST_RETRY),
        TaskSpec(id="inside", handler="halve", inputs={"n": None}, retry=FAST_RETRY),
    )
    async with Orchestrator(settings(), db_url, registry=reg, workflows=[spec]) as o:
        run_id, state = await run_to_end(o, "mistyped")
        assert state == RunState.FAILED
        rows = await task_rows(o, run_id)
        assert (rows["typo"]["state"], rows["typo"]["attempt"]) == ("failed", 1)
        assert rows["typo"]["error"] == (
            "NonRetryableError: handler 'greet' cannot be called with the task's inputs "
            "(nmae): unexpected argument 'nmae' (did you mean 'name'?); missing argument 'name'"
        )
        assert (rows["missing"]["state"], rows["missing"]["attempt"]) == ("failed", 1)
        assert rows["missing"]["error"].endswith("inputs (none): missing argument 'n'")
        assert (rows["inside"]["state"], rows["inside"]["attempt"]) == ("failed", 3)
        assert rows["inside"]["error"].startswith("TypeError: unsupported operand")


async def test_a_rendered_input_of_the_wrong_type_fails_without_retries(db_url: str) -> None:
    # Templates are checked when the task runs: the literal check at load time cannot.
    spec = wf(
        "typed",
        TaskSpec(
            id="nap",
            handler="sleep",
            inputs={"seconds": "{{ params.wait }}"},
            retry=FAST_RETRY,
        ),
        params={"wait": 0},
    )
    async with Orchestrator(settings(), db_url, registry=builtin_registry(), workflows=[spec]) as o:
        run_id, state = await run_to_end(o, "typed", wait="soon")
        assert state == RunState.FAILED
        rows = await task_rows(o, run_id)
        assert (rows["nap"]["state"], rows["nap"]["attempt"]) == ("failed", 1)
        assert rows["nap"]["error"] == (
            "NonRetryableError: handler 'sleep' cannot be called with the task's inputs "
            "(seconds): argument 'seconds': Input should be a valid number, got a string"
        )
        run_id, state = await run_to_end(o, "typed", wait=0)
        assert state == RunState.SUCCESS


async def test_timeout_and_oversized_output_fail_the_attempt(db_url: str) -> None:
    reg = builtin_registry()

    async def big(ctx: Any) -> str:
        return "x" * 5000

    reg.register("big", big)
    once = RetryPolicy(max_attempts=1)
    spec = wf(
        "limits",
        TaskSpec(id="slow", handler="sleep", inputs={"seconds": 30}, timeout_s=0.2, retry=once),
        TaskSpec(id="large", handler="big", retry=once),
    )
    async with Orchestrator(
        settings(max_output_bytes=1000), db_url, registry=reg, workflows=[spec]
    ) as o:
        run_id, state = await run_to_end(o, "limits")
        assert state == RunState.FAILED
        rows = await task_rows(o, run_id)
        assert "timed out after 0.2s" in rows["slow"]["error"]
        assert "over the limit of 1000 bytes" in rows["large"]["error"]


async def test_trigger_rules_after_a_failure(db_url: str) -> None:
    once = RetryPolicy(max_attempts=1)
    spec = wf(
        "rules",
        TaskSpec(id="ok", handler="noop"),
        TaskSpec(id="bad", handler="fail", retry=once),
        TaskSpec(
            id="cleanup", handler="noop", upstream=("ok", "bad"), trigger_rule=TriggerRule.ALL_DONE
        ),
        TaskSpec(
            id="alert", handler="noop", upstream=("bad",), trigger_rule=TriggerRule.ONE_FAILED
        ),
        TaskSpec(id="report", handler="noop", upstream=("ok", "bad")),
        TaskSpec(id="after_report", handler="noop", upstream=("report",)),
        TaskSpec(
            id="happy_path_only",
            handler="noop",
            upstream=("bad",),
            trigger_rule=TriggerRule.ALL_FAILED,
        ),
    )
    async with Orchestrator(settings(), db_url, registry=builtin_registry(), workflows=[spec]) as o:
        run_id, state = await run_to_end(o, "rules")
        assert state == RunState.FAILED
        got = {t: r["state"] for t, r in (await task_rows(o, run_id)).items()}
        assert got == {
            "ok": "success",
            "bad": "failed",
            "cleanup": "success",
            "alert": "success",
            "report": "upstream_failed",
            "after_report": "upstream_failed",
            "happy_path_only": "success",
        }


async def test_unknown_workflow_is_refused_and_writes_nothing(db_url: str) -> None:
    async with Orchestrator(settings(worker_slots=0), db_url) as o:
        assert o.engine is not None and o.db is not None
        with pytest.raises(UnknownWorkflowError, match="unknown workflow 'nope'"):
            await o.engine.trigger("nope")
        async with o.db.pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM runs") == 0


async def test_a_run_pins_its_version(db_url: str) -> None:
    v1 = wf("pinned", TaskSpec(id="t", handler="echo", inputs={"v": 1}))
    v2 = wf("pinned", TaskSpec(id="t", handler="echo", inputs={"v": 2}))
    async with Orchestrator(
        settings(worker_slots=0), db_url, registry=builtin_registry(), workflows=[v1]
    ) as o:
        assert o.engine is not None
        first = await o.engine.trigger("pinned")
        await o.register([v2])
        second = await o.engine.trigger("pinned")
    async with Orchestrator(settings(), db_url, registry=builtin_registry(), migrate=False) as o:
        assert o.db is not None
        states = await wait_for_runs(o.db, [first, second], timeout=20)
        assert set(states.values()) == {RunState.SUCCESS}

        assert orjson.loads((await task_rows(o, first))["t"]["output"]) == {"v": 1}
        assert orjson.loads((await task_rows(o, second))["t"]["output"]) == {"v": 2}


async def test_http_request_task_calls_a_real_server(db_url: str) -> None:
    from aiohttp import web

    received: list[dict[str, Any]] = []

    async def orders(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({"accepted": True}, status=201)

    app = web.Application()
    app.router.add_post("/orders", orders)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        spec = wf(
            "post_order",
            TaskSpec(
                id="post",
                handler="http.request",
                inputs={
                    "url": f"http://127.0.0.1:{port}/orders",
                    "method": "POST",
                    "json": {"order_id": "{{ params.order_id }}"},
                },
            ),
            TaskSpec(
                id="after",
                handler="echo",
                upstream=("post",),
                inputs={"status": "{{ upstream.post.status }}"},
            ),
        )
        async with Orchestrator(
            settings(), db_url, registry=builtin_registry(), workflows=[spec]
        ) as o:
            run_id, state = await run_to_end(o, "post_order", order_id="A-17")
            assert state == RunState.SUCCESS
            rows = await task_rows(o, run_id)
            assert orjson.loads(rows["after"]["output"]) == {"status": 201}
        assert received == [{"order_id": "A-17"}]
    finally:
        await runner.cleanup()


async def test_a_waiter_returns_the_runs_that_ended_as_soon_as_one_has(db_url: str) -> None:
    quick = wf("quick", TaskSpec(id="a", handler="echo"))
    held = wf("held", TaskSpec(id="approve", handler="sensor.callback", inputs={"timeout_s": 3600}))
    async with Orchestrator(
        settings(), db_url, registry=builtin_registry(), workflows=[quick, held]
    ) as o:
        assert o.engine is not None and o.db is not None
        waiting = await o.engine.trigger("held", {}, actor="test")
        done = await o.engine.trigger("quick", {}, actor="test")
        async with RunWaiter(o.db, poll_s=0.2) as waiter:
            assert await waiter.first_ended([waiting, done], timeout=20) == {done: RunState.SUCCESS}
            # The held run never ends by itself: both ways of waiting give up.
            with pytest.raises(TimeoutError):
                await waiter.first_ended([waiting], timeout=0.3)
            with pytest.raises(TimeoutError):
                await waiter.wait([waiting, done], timeout=0.3)
            assert await waiter.wait([done], timeout=20) == {done: RunState.SUCCESS}
