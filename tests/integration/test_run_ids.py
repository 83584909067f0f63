"""Run ids as a user meets them: a repeated request uses up no id, and an id
with no run is explained (skipped or pruned), not shown as lost data."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from handlers import builtin_registry
from orchestrator.app import Orchestrator
from orchestrator.engine import Engine
from orchestrator.errors import UnknownRunError
from orchestrator.settings import Settings
from orchestrator.spec import TaskSpec, WorkflowSpec
from orchestrator.store import Database
from orchestrator.views import show_run

ROOT = Path(__file__).resolve().parents[2]
SPEC = WorkflowSpec(name="greeting", tasks=(TaskSpec(id="say", handler="noop"),))


async def test_a_repeated_idempotency_key_uses_up_no_run_id(db_url: str) -> None:
    settings = Settings(worker_slots=0, http_port=0)
    async with Orchestrator(
        settings, db_url, registry=builtin_registry(), workflows=[SPEC], http=True
    ) as orch:
        assert orch.http is not None
        base = f"http://127.0.0.1:{orch.http.port}/api/v1"
        async with aiohttp.ClientSession() as http:

            async def trigger(key: str) -> tuple[int, Any]:
                async with http.post(
                    base + "/workflows/greeting/runs", json={}, headers={"Idempotency-Key": key}
                ) as resp:
                    return resp.status, await resp.json()

            status, first = await trigger("k-1")
            assert status == 201
            for _ in range(3):
                assert await trigger("k-1") == (200, first)
            status, second = await trigger("k-2")
            assert status == 201
            [a], [b] = first["run_ids"], second["run_ids"]
            assert b == a + 1

            async with http.get(f"{base}/runs/{b + 1}") as resp:
                assert resp.status == 404
                error = (await resp.json())["error"]
    assert f"no run with id {b + 1}" in error and "not dense" in error
    assert "GET /api/v1/runs" in error


async def three_runs_with_the_middle_one_pruned(engine: Engine, db: Database) -> list[int]:
    """As retention leaves the ids: the middle run deleted, its id unused."""
    await engine.register([SPEC])
    ids = [await engine.trigger("greeting", actor="test") for _ in range(3)]
    async with db.pool.acquire() as conn:
        await conn.execute("DELETE FROM runs WHERE id = $1", ids[1])
    return ids


async def test_show_says_why_an_id_has_no_run(engine: Engine, db: Database) -> None:
    with pytest.raises(UnknownRunError) as nothing:
        await show_run(db, 1)
    assert "there are no runs yet" in str(nothing.value)

    first, gap, newest = await three_runs_with_the_middle_one_pruned(engine, db)
    with pytest.raises(UnknownRunError) as skipped:
        await show_run(db, gap)
    message = str(skipped.value)
    assert message.startswith(f"no run with id {gap}: run ids are unique and increasing")
    assert "not dense" in message and "deleted by retention" in message
    assert f"The newest run is {newest}" in message and "`orchestrator runs`" in message

    with pytest.raises(UnknownRunError) as ahead:
        await show_run(db, newest + 10)
    assert str(ahead.value) == (
        f"no run with id {newest + 10}: the newest run is {newest}; "
        "`orchestrator runs` lists recent runs"
    )
    async with db.pool.acquire() as conn:
        await conn.execute("DELETE FROM runs WHERE id = $1", first)
    with pytest.raises(UnknownRunError) as pruned:
        await show_run(db, first)
    assert f"the oldest run kept is {newest}" in str(pruned.value)
    assert (await show_run(db, newest)).startswith(f"run {newest}  greeting")


async def test_orchestrator_show_of_a_skipped_id_explains_it(
    engine: Engine, db: Database, db_url: str
) -> None:
    _first, gap, newest = await three_runs_with_the_middle_one_pruned(engine, db)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env.update(PYTHONPATH=str(ROOT), ORCHESTRATOR_DATABASE_URL=db_url)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "orchestrator.cli",
        "show",
        str(gap),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    stderr = err.decode()
    assert proc.returncode != 0 and "Traceback" not in stderr
    assert f"no run with id {gap}" in stderr and "not dense" in stderr
    assert f"newest run is {newest}" in stderr and "orchestrator runs" in stderr
