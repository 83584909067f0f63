"""Task logs: each attempt's ctx.log records, stdout and stderr are stored per
attempt, capped, readable by the CLI and the API, shown for a failed task and
pruned with their run."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
from cli_process import cli_runner
from eventually import eventually
from suite_settings import suite_settings

from handlers import builtin_registry
from orchestrator import task_logs
from orchestrator.app import Orchestrator
from orchestrator.clock import SYSTEM_CLOCK
from orchestrator.retention import prune
from orchestrator.run_waiter import wait_for_runs
from orchestrator.spec import RetryPolicy, TaskSpec, WorkflowSpec
from orchestrator.states import RunState
from orchestrator.store import Database
from orchestrator.views import show_run

ROOT = Path(__file__).resolve().parents[2]
FAST_RETRY = RetryPolicy(max_attempts=3, initial_delay_s=0.01, max_delay_s=0.05, jitter=0)
ONCE = RetryPolicy(max_attempts=1)


async def run_to_end(orch: Orchestrator, workflow: str) -> tuple[int, RunState]:
    assert orch.engine is not None and orch.db is not None
    run_id = await orch.engine.trigger(workflow, {}, actor="test")
    states = await wait_for_runs(orch.db, [run_id], timeout=30)
    return run_id, states[run_id]


async def texts(db: Database, run_id: int, task: str, attempt: int) -> list[tuple[str, str]]:
    return [
        (line.stream, line.text) for line in await task_logs.read_lines(db, run_id, task, attempt)
    ]


def cli(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return cli_runner(db_url)(*args)


async def test_a_handler_printing_10_mib_is_cut_at_the_cap_and_the_run_succeeds(
    db_url: str,
) -> None:
    reg = builtin_registry()

    def loud(ctx: Any) -> str:  # sync: runs in a thread, prints still reach its log
        line = "x" * 1023
        for _ in range(10 * 1024):
            print(line)
        return "done"

    reg.register("loud", loud)
    spec = WorkflowSpec(name="loud", tasks=(TaskSpec(id="t", handler="loud"),))
    async with Orchestrator(suite_settings(), db_url, registry=reg, workflows=[spec]) as o:
        assert o.db is not None
        run_id, state = await run_to_end(o, "loud")
        assert state == RunState.SUCCESS
        lines = await texts(o.db, run_id, "t", 1)
        kept = [text for stream, text in lines if stream == "stdout"]
        assert kept and all(text == "x" * 1023 for text in kept)
        assert sum(len(text) + 1 for text in kept) <= 1_048_576
        assert len(kept) == 1_048_576 // 1024  # filled up to the cap
        meta = [text for stream, text in lines if stream == "meta"]
        assert "log cut" in meta[0] and "1048576 bytes" in meta[0]
        assert "more characters were dropped" in meta[-1]


async def test_a_killed_shell_command_keeps_its_output_and_show_has_its_tail(
    db_url: str,
) -> None:
    spec = WorkflowSpec(
        name="slow",
        tasks=(
            TaskSpec(
                id="sh",
                handler="shell",
                retry=ONCE,
                inputs={
                    "command": "echo first; echo oops >&2; printf partial; sleep 30",
                    "timeout_s": 0.5,
                },
            ),
        ),
    )
    async with Orchestrator(
        suite_settings(), db_url, registry=builtin_registry(), workflows=[spec]
    ) as o:
        assert o.db is not None
        run_id, state = await run_to_end(o, "slow")
        assert state == RunState.FAILED
        lines = await texts(o.db, run_id, "sh", 1)
        assert ("stdout", "first") in lines
        assert ("stderr", "oops") in lines
        assert ("stdout", "partial") in lines  # an unfinished last line is kept too
        shown = await show_run(o.db, run_id)
        assert "log of sh attempt 1" in shown
        assert "  first" in shown and "  oops" in shown

    # The CLI reads it as text and as JSON lines.
    done = cli(db_url, "logs", str(run_id), "sh")
    assert done.returncode == 0, done.stderr
    assert "first" in done.stdout and "oops" in done.stderr
    as_json = cli(db_url, "logs", str(run_id), "sh", "--attempt", "1", "--json")
    assert as_json.returncode == 0, as_json.stderr
    records = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert {"stream": "stdout", "text": "first"}.items() <= records[0].items()
    assert set(records[0]) == {"chunk", "stream", "at", "text"}
    missing = cli(db_url, "logs", str(run_id), "nope")
    assert missing.returncode == 2 and "no task 'nope'" in missing.stderr


async def test_a_retried_task_has_a_log_per_attempt_read_by_the_api(db_url: str) -> None:
    reg = builtin_registry()

    async def flaky(ctx: Any) -> int:
        print(f"printed by attempt {ctx.attempt}")
        ctx.log.info("logged by attempt %d", ctx.attempt)
        ctx.log.debug("not kept: below INFO")
        if ctx.attempt < 3:
            raise RuntimeError("transient")
        return int(ctx.attempt)

    reg.register("flaky", flaky)
    spec = WorkflowSpec(name="flaky", tasks=(TaskSpec(id="t", handler="flaky", retry=FAST_RETRY),))
    async with Orchestrator(
        suite_settings(), db_url, registry=reg, workflows=[spec], http=True
    ) as o:
        assert o.db is not None and o.http is not None
        run_id, state = await run_to_end(o, "flaky")
        assert state == RunState.SUCCESS
        for attempt in (1, 2, 3):
            assert await texts(o.db, run_id, "t", attempt) == [
                ("stdout", f"printed by attempt {attempt}"),
                ("log", f"INFO logged by attempt {attempt}"),
            ]
        base = f"http://127.0.0.1:{o.http.port}/api/v1/runs/{run_id}/tasks"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/t/logs") as resp:
                assert resp.status == 200
                latest = await resp.json()
            assert latest["attempt"] == 3 and latest["running"] is False
            assert [line["text"] for line in latest["lines"]] == [
                "printed by attempt 3",
                "INFO logged by attempt 3",
            ]
            async with http.get(f"{base}/t/logs", params={"attempt": "1"}) as resp:
                first = await resp.json()
            assert first["lines"][0]["text"] == "printed by attempt 1"
            after = first["next_after"]
            async with http.get(
                f"{base}/t/logs", params={"attempt": "1", "after": str(after)}
            ) as resp:
                assert (await resp.json())["lines"] == []
            async with http.get(f"{base}/nope/logs") as resp:
                assert resp.status == 404
                assert resp.content_type == "application/problem+json"
            async with http.get(f"{base}/t/logs", params={"attempt": "x"}) as resp:
                assert resp.status == 400


async def test_follow_prints_until_the_attempt_ends(db_url: str) -> None:
    reg = builtin_registry()
    release = asyncio.Event()

    async def waits(ctx: Any) -> None:
        print("before the wait")
        await release.wait()
        print("after the wait")

    reg.register("waits", waits)
    spec = WorkflowSpec(name="waits", tasks=(TaskSpec(id="t", handler="waits"),))
    async with Orchestrator(suite_settings(), db_url, registry=reg, workflows=[spec]) as o:
        assert o.db is not None and o.engine is not None
        db = o.db
        run_id = await o.engine.trigger("waits", {}, actor="test")

        async def first_line_stored() -> bool:
            return bool(await texts(db, run_id, "t", 1))

        await eventually(first_line_stored, what="the first line stored")
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
        follower = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "orchestrator.cli",
            "logs",
            str(run_id),
            "t",
            "--follow",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**env, "PYTHONPATH": str(ROOT), "ORCHESTRATOR_DATABASE_URL": db_url},
        )
        assert follower.stdout is not None
        try:
            # The follower prints what is there while the attempt still runs ...
            first = await asyncio.wait_for(follower.stdout.readline(), timeout=30)
            assert first.decode().rstrip("\n") == "before the wait"
            assert follower.returncode is None
            release.set()
            # ... and the rest once it is stored, then ends with the attempt.
            rest, err = await asyncio.wait_for(follower.communicate(), timeout=30)
        finally:
            if follower.returncode is None:
                follower.kill()
                await follower.wait()
        assert follower.returncode == 0, err.decode()
        assert rest.decode().splitlines() == ["after the wait"]
        await wait_for_runs(db, [run_id], timeout=20)


async def test_logs_are_pruned_with_their_run(db_url: str) -> None:
    reg = builtin_registry()

    async def chatty(ctx: Any) -> None:
        ctx.log.warning("something to keep")

    reg.register("chatty", chatty)
    spec = WorkflowSpec(name="chatty", tasks=(TaskSpec(id="t", handler="chatty"),))
    async with Orchestrator(suite_settings(), db_url, registry=reg, workflows=[spec]) as o:
        assert o.db is not None
        old, _ = await run_to_end(o, "chatty")
        kept, _ = await run_to_end(o, "chatty")
        async with o.db.pool.acquire() as conn:
            await conn.execute(
                "UPDATE runs SET ended_at = $2 WHERE id = $1",
                old,
                SYSTEM_CLOCK.now() - timedelta(days=40),
            )
        assert await texts(o.db, old, "t", 1) == [("log", "WARNING something to keep")]
        pruned = await prune(o.db, SYSTEM_CLOCK.now() - timedelta(days=30))
        assert pruned.runs == 1
        assert await texts(o.db, old, "t", 1) == []
        assert await texts(o.db, kept, "t", 1) == [("log", "WARNING something to keep")]
