"""Operator actions over real HTTP and from the command line: the actor is the
caller, errors name what is wrong, and a refused action changes nothing."""

from __future__ import annotations

import getpass
from typing import Any

import aiohttp
from cli_process import cli_runner
from suite_settings import suite_settings

from orchestrator import audit
from orchestrator.app import Orchestrator
from orchestrator.run_waiter import wait_for_runs
from orchestrator.spec import RetryPolicy, TaskSpec, WorkflowSpec
from orchestrator.states import RunState

SPEC = WorkflowSpec(
    name="chain",
    tasks=(
        TaskSpec(id="a", handler="noop"),
        TaskSpec(id="b", handler="fail", upstream=("a",), retry=RetryPolicy(max_attempts=1)),
        TaskSpec(id="c", handler="noop", upstream=("b",)),
    ),
)


async def test_operator_endpoints_answer_and_refuse_with_named_problems(db_url: str) -> None:
    from handlers import builtin_registry

    async with Orchestrator(
        suite_settings(), db_url, registry=builtin_registry(), workflows=[SPEC], http=True
    ) as o:
        assert o.http is not None and o.db is not None and o.engine is not None
        base = f"http://127.0.0.1:{o.http.port}/api/v1"
        run_id = await o.engine.trigger("chain", actor="test")
        assert (await wait_for_runs(o.db, [run_id], timeout=20))[run_id] == RunState.FAILED

        async with aiohttp.ClientSession() as http:

            async def post(path: str, **kw: Any) -> tuple[int, Any]:
                async with http.post(base + path, **kw) as resp:
                    return resp.status, await resp.json(content_type=None)

            before = await o.db.pool.fetchval("SELECT count(*) FROM transitions")
            refusals = [
                (f"/runs/{run_id + 99}/clear", {}, 404, "no run with id"),
                (f"/runs/{run_id}/clear", {"tasks": ["zz"]}, 404, "no task 'zz'"),
                (
                    f"/runs/{run_id}/clear",
                    {"tasks": "b"},
                    400,
                    "tasks: Input should be",
                ),
                (f"/runs/{run_id}/clear", {"downstream": True}, 400, "'downstream' needs"),
                (f"/runs/{run_id}/clear", {"failed_only": 1}, 400, "failed_only: Input should be"),
                (f"/runs/{run_id}/clear", {"actor": "root"}, 400, "actor: unexpected key"),
                (f"/runs/{run_id}/clear", [1], 400, "body must be a JSON object"),
                (f"/runs/{run_id}/clear", {"tasks": ["a"], "failed_only": True}, 409, "nothing"),
                (f"/runs/{run_id}/cancel", {}, 409, "already ended (failed)"),
                (
                    f"/runs/{run_id}/cancel",
                    {"reason": 5},
                    400,
                    "reason: Input should",
                ),
                (f"/runs/{run_id}/tasks/b/mark", {}, 400, "state: Field required"),
                (
                    f"/runs/{run_id}/tasks/b/mark",
                    {"state": "running"},
                    400,
                    "state: Input should be",
                ),
                (
                    f"/runs/{run_id}/tasks/b/mark",
                    {"state": "failed", "output": 1},
                    400,
                    "'output' is only given",
                ),
                (f"/runs/{run_id}/tasks/zz/mark", {"state": "success"}, 404, "no task 'zz'"),
                (f"/runs/{run_id}/tasks/b/mark", {"state": "failed"}, 409, "failed already"),
                ("/runs/x/clear", {}, 400, "run_id must be an integer"),
                ("/workflows/nope/tasks/a/pause", {}, 404, "unknown workflow 'nope'"),
                ("/workflows/chain/tasks/zz/pause", {}, 404, "no task 'zz'"),
                ("/workflows/chain/tasks/a/unpause", {}, 409, "is not held"),
            ]
            for path, body, status, words in refusals:
                got, answer = await post(path, json=body)
                assert (got, path) == (status, path), answer
                assert words in answer["detail"], (path, answer)
            got, _ = await post(f"/runs/{run_id}/clear", data=b"{}")  # no JSON content type
            assert got == 415
            assert await o.db.pool.fetchval("SELECT count(*) FROM transitions") == before
            assert await audit.entries(o.db) == []

            status, body = await post(
                f"/runs/{run_id}/tasks/b/mark",
                json={"state": "success", "output": {"rows": 2}, "reason": "fixed upstream"},
                headers={"X-Actor": "admin"},
            )
            assert status == 200, body
            assert body["redecided"] == ["c"]
            assert (await wait_for_runs(o.db, [run_id], timeout=20))[run_id] == RunState.SUCCESS
            status, body = await post(f"/runs/{run_id}/clear", json={"tasks": ["b"]})
            assert status == 200 and body["cleared"] == ["b"] and body["reopened"] is True
            assert (await wait_for_runs(o.db, [run_id], timeout=20))[run_id] == RunState.FAILED
            status, body = await post("/workflows/chain/tasks/a/pause", json={"reason": "hold"})
            assert (status, body["moved"]) == (200, 0)
            # Its root held, the new run stays live (no worker can end it
            # first) until the operator cancels it.
            other = await o.engine.trigger("chain", actor="test")
            status, body = await post(f"/runs/{other}/cancel", json={"reason": "not needed"})
            assert status == 200, body
            assert (await post("/workflows/chain/tasks/a/unpause", json={}))[0] == 200
            assert (await wait_for_runs(o.db, [other], timeout=20))[other] == RunState.CANCELLED

        found = await audit.entries(o.db)
        assert [e.action for e in found] == ["unpause", "cancel", "pause", "clear", "mark"]
        assert {e.actor for e in found} == {"api:127.0.0.1"}  # never the X-Actor header
        assert found[-1].reason == "fixed upstream"


def test_cli_clear_cancel_and_mark(db_url: str) -> None:
    import asyncio

    from orchestrator.engine import Engine
    from orchestrator.store import connect

    cli = cli_runner(db_url)

    async def setup() -> int:
        # No worker runs: the tasks wait queued for the commands to act on them.
        db = await connect(db_url)
        try:
            engine = Engine(db)
            await engine.register(
                [
                    WorkflowSpec(
                        name="pair",
                        tasks=(
                            TaskSpec(id="a", handler="noop"),
                            TaskSpec(id="b", handler="noop", upstream=("a",)),
                        ),
                    )
                ]
            )
            return await engine.trigger("pair", actor="test")
        finally:
            await db.close()

    run_id = asyncio.run(setup())
    marked = cli("mark", str(run_id), "a", "success", "--output", '{"n": 1}', "--reason", "by hand")
    assert marked.returncode == 0, marked.stderr
    assert "decided again" not in marked.stdout and "marked a success" in marked.stdout
    bad = cli("mark", str(run_id), "a", "success", "--output", "{nope")
    assert bad.returncode == 2 and "not valid JSON" in bad.stderr
    busy = cli("clear", str(run_id), "--task", "b")
    assert busy.returncode == 2 and "'b' is queued" in busy.stderr
    cancelled = cli("cancel", str(run_id), "--reason", "enough")
    assert cancelled.returncode == 0, cancelled.stderr
    assert "skipped tasks: b" in cancelled.stdout
    again = cli("cancel", str(run_id))
    assert again.returncode == 2 and "already ended (cancelled)" in again.stderr
    cleared = cli("clear", str(run_id), "--reason", "retry")
    assert cleared.returncode == 0, cleared.stderr
    assert f"cleared b in run {run_id} (run re-opened)" in cleared.stdout
    unknown = cli("clear", "999999")
    assert unknown.returncode == 2 and "no run with id 999999" in unknown.stderr
    listed = cli("audit", "--run", str(run_id))
    assert listed.returncode == 0
    assert f"cli:{getpass.getuser()}" in listed.stdout
    for word in ("mark", "cancel", "clear", "by hand", "enough", "retry"):
        assert word in listed.stdout
