"""Secrets: ``{{ secrets.NAME }}`` reaches the handler at run time and nothing
else: no table, no API answer, no log line, no ``show`` output."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from suite_settings import suite_settings

from handlers import builtin_registry
from orchestrator import task_logs
from orchestrator.app import Orchestrator
from orchestrator.run_waiter import wait_for_runs
from orchestrator.secrets import DirectoryBackend, Secrets
from orchestrator.spec import RetryPolicy, TaskSpec, WorkflowSpec
from orchestrator.states import RunState
from orchestrator.store import Database
from orchestrator.views import show_run

SECRET = "s3cr3t-Value-7f1c2b9e"
ROOT = Path(__file__).resolve().parents[2]
ONCE = RetryPolicy(max_attempts=1)


async def tables_holding(db: Database, value: str) -> list[str]:
    """Every table with a row whose text form (all its columns) holds ``value``."""
    async with db.pool.acquire() as conn:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
        )
        found = []
        for row in tables:
            name = row["table_name"]
            hits = await conn.fetchval(
                f'SELECT count(*) FROM "{name}" t WHERE strpos(t::text, $1) > 0', value
            )
            if hits:
                found.append(name)
        return found


async def all_log_lines(db: Database, run_id: int) -> list[str]:
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT task_id, attempt FROM task_instances WHERE run_id = $1", run_id
        )
    lines: list[str] = []
    for row in rows:
        for attempt in range(1, row["attempt"] + 1):
            found = await task_logs.read_lines(db, run_id, row["task_id"], attempt)
            lines += [line.text for line in found]
    return lines


async def test_a_secret_reaches_the_server_and_nothing_else(
    db_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("ORCHESTRATOR_SECRET_API_TOKEN", SECRET)
    seen: list[str] = []

    async def echo_auth(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        # The answer echoes the credential: the task's output must not keep it.
        return web.json_response({"you_sent": request.headers.get("Authorization")})

    server = web.Application()
    server.router.add_get("/echo", echo_auth)
    runner = web.AppRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]

    reg = builtin_registry()

    async def leaky(ctx: Any, token: str) -> None:
        print(f"printing the token {token}")
        ctx.log.info("logging the token %s", token)
        raise RuntimeError(f"refused with token {token}")

    reg.register("leaky", leaky)
    spec = WorkflowSpec(
        name="secretive",
        tasks=(
            TaskSpec(
                id="call",
                handler="http.request",
                inputs={
                    "url": f"http://127.0.0.1:{port}/echo",
                    "headers": {"Authorization": "Bearer {{ secrets.API_TOKEN }}"},
                },
            ),
            TaskSpec(
                id="leak",
                handler="leaky",
                retry=ONCE,
                upstream=("call",),
                inputs={"token": "{{ secrets.API_TOKEN }}"},
            ),
        ),
    )
    try:
        async with Orchestrator(
            suite_settings(), db_url, registry=reg, workflows=[spec], http=True
        ) as o:
            assert o.db is not None and o.engine is not None and o.http is not None
            run_id = await o.engine.trigger("secretive", {}, actor="test")
            states = await wait_for_runs(o.db, [run_id], timeout=30)
            assert states[run_id] == RunState.FAILED
            assert seen == [f"Bearer {SECRET}"]  # the server saw the real value

            async with o.db.pool.acquire() as conn:
                rows = await conn.fetch(
                    "SELECT task_id, state::text, error, output::text FROM task_instances "
                    "WHERE run_id = $1",
                    run_id,
                )
            by_task = {r["task_id"]: r for r in rows}
            assert by_task["call"]["state"] == "success"
            assert "Bearer ***" in by_task["call"]["output"]
            assert by_task["leak"]["error"] == "RuntimeError: refused with token ***"

            assert await tables_holding(o.db, SECRET) == []
            assert await tables_holding(o.db, "***") != []  # the scan does find things

            lines = await all_log_lines(o.db, run_id)
            assert "printing the token ***" in lines
            assert "INFO logging the token ***" in lines
            assert not [line for line in lines if SECRET in line]

            shown = await show_run(o.db, run_id)
            assert SECRET not in shown and "printing the token ***" in shown

            base = f"http://127.0.0.1:{o.http.port}/api/v1"
            async with aiohttp.ClientSession() as http:
                for path in (
                    "/runs",
                    f"/runs/{run_id}",
                    f"/runs/{run_id}/tasks/call/logs",
                    f"/runs/{run_id}/tasks/leak/logs",
                ):
                    async with http.get(base + path) as resp:
                        assert resp.status == 200, path
                        assert SECRET not in await resp.text(), path
    finally:
        await runner.cleanup()
    assert not [r for r in caplog.records if SECRET in r.getMessage()]
    assert SECRET not in caplog.text


async def test_a_missing_secret_fails_the_attempt_naming_it(db_url: str) -> None:
    spec = WorkflowSpec(
        name="unset",
        tasks=(TaskSpec(id="t", handler="echo", inputs={"x": "{{ secrets.NOT_SET_ANYWHERE }}"}),),
    )
    async with Orchestrator(
        suite_settings(), db_url, registry=builtin_registry(), workflows=[spec]
    ) as o:
        assert o.db is not None and o.engine is not None
        run_id = await o.engine.trigger("unset", {}, actor="test")
        states = await wait_for_runs(o.db, [run_id], timeout=30)
        assert states[run_id] == RunState.FAILED
        async with o.db.pool.acquire() as conn:
            error, attempt = await conn.fetchrow(
                "SELECT error, attempt FROM task_instances WHERE run_id = $1", run_id
            )
        assert "secret 'NOT_SET_ANYWHERE' is not set in any secret backend" in error
        assert attempt == 1  # no retry can make it appear


async def test_secrets_come_from_a_directory_of_files(tmp_path: Path) -> None:
    (tmp_path / "db_password").write_text("from-a-file\n")
    secrets = Secrets([DirectoryBackend(tmp_path)])
    assert secrets.resolve(["db_password"]) == {"db_password": "from-a-file"}
    assert secrets.get("../etc/passwd") is None
    assert secrets.missing(["db_password", "other"]) == ["other"]


async def test_secrets_from_the_directory_setting_reach_a_task(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "FROM_FILE").write_text("file-secret-value\n")
    reg = builtin_registry()
    got: list[str] = []

    async def keep(ctx: Any, value: str) -> None:
        got.append(value)

    reg.register("keep", keep)
    spec = WorkflowSpec(
        name="filed",
        tasks=(TaskSpec(id="t", handler="keep", inputs={"value": "{{ secrets.FROM_FILE }}"}),),
    )
    async with Orchestrator(
        suite_settings(secrets_dir=tmp_path), db_url, registry=reg, workflows=[spec]
    ) as o:
        assert o.db is not None and o.engine is not None
        run_id = await o.engine.trigger("filed", {}, actor="test")
        assert (await wait_for_runs(o.db, [run_id], timeout=30))[run_id] == RunState.SUCCESS
    assert got == ["file-secret-value"]


def test_validate_warns_about_a_secret_no_backend_holds(tmp_path: Path) -> None:
    (tmp_path / "wf.yaml").write_text(
        "name: needs_secret\n"
        "tasks:\n"
        "  - id: t\n"
        "    handler: echo\n"
        "    inputs:\n"
        "      known: '{{ secrets.KNOWN_ONE }}'\n"
        "      unknown: '{{ secrets.NOBODY_HAS_THIS }}'\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env["PYTHONPATH"] = str(ROOT)
    env["ORCHESTRATOR_SECRET_KNOWN_ONE"] = "x"
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "validate", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "ok  needs_secret" in done.stdout
    assert "secret 'NOBODY_HAS_THIS' is not set in any secret backend" in done.stderr
    assert "KNOWN_ONE" not in done.stderr


async def test_a_wait_whose_settings_hold_a_secret_is_refused(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.deferral import Defer

    monkeypatch.setenv("ORCHESTRATOR_SECRET_POLL_KEY", SECRET)
    reg = builtin_registry()

    async def waits_with(ctx: Any, key: str) -> None:
        raise Defer("poll", "a poll", config={"headers": {"X-Key": key}}, timeout_s=60)

    reg.register("waits_with", waits_with)
    spec = WorkflowSpec(
        name="waiting",
        tasks=(TaskSpec(id="t", handler="waits_with", inputs={"key": "{{ secrets.POLL_KEY }}"}),),
    )
    async with Orchestrator(suite_settings(), db_url, registry=reg, workflows=[spec]) as o:
        assert o.db is not None and o.engine is not None
        run_id = await o.engine.trigger("waiting", {}, actor="test")
        assert (await wait_for_runs(o.db, [run_id], timeout=30))[run_id] == RunState.FAILED
        async with o.db.pool.acquire() as conn:
            error = await conn.fetchval(
                "SELECT error FROM task_instances WHERE run_id = $1", run_id
            )
        assert "may not hold a secret" in error
        assert await tables_holding(o.db, SECRET) == []


def test_a_trigger_param_may_not_take_a_secret() -> None:
    from orchestrator.validation import collect_errors

    spec = WorkflowSpec.model_validate(
        {
            "name": "hooked",
            "triggers": [
                {"source": "webhook", "hook": "h", "params": {"token": "{{ secrets.API_TOKEN }}"}}
            ],
            "tasks": [{"id": "t", "handler": "echo"}],
        }
    )
    errors = collect_errors(spec, builtin_registry())
    assert any("secrets cannot be used here" in str(e) for e in errors), errors
