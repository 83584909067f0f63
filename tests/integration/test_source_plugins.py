"""A source that lives outside the orchestrator and its built-in sources (a
PostgreSQL LISTEN channel, ``tests/pg_listen_source``) added as an entry point
would add it: its trigger model validates YAML, its migration and named SQL
run, its sensor's keys are computed by intake, its CLI command is there, and
its notifications start runs end to end through the real intake and worker."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import orjson
import pytest
from click.testing import CliRunner
from eventually import eventually
from pg_listen_source import PgListenSource, handlers, plugin, sql
from pydantic import SecretStr

from handlers import builtin_registry
from orchestrator.app import Orchestrator
from orchestrator.cli import main
from orchestrator.loader import load_path
from orchestrator.plugins import create_sources, source_registry
from orchestrator.run_waiter import wait_for_runs
from orchestrator.settings import Settings
from orchestrator.states import RunState
from orchestrator.store import Database

ORDERS = """\
name: on_notify
tasks: [{id: t, handler: echo, inputs: {n: "{{ params.n }}"}}]
params: {n: {type: integer}}
triggers:
  - source: pg_listen
    channel: orders
    params: {n: "{{ payload.n }}"}
"""

SHIPPED = """\
name: await_shipment
params: {order: {type: string}}
tasks:
  - id: shipped
    handler: pg_listen.wait
    inputs: {channel: shipments, correlation: payload.order, equals: "{{ params.order }}"}
  - id: after
    handler: echo
    upstream: [shipped]
    inputs: {by: "{{ upstream.shipped.payload.carrier }}"}
"""


@pytest.fixture
def pg_listen() -> Iterator[None]:
    with source_registry().added("pg_listen", plugin):
        yield


async def runs_of(db: Database, workflow: str) -> list[asyncpg.Record]:
    async with db.pool.acquire() as conn:
        rows: list[asyncpg.Record] = await conn.fetch(
            "SELECT id, state::text, params FROM runs WHERE workflow = $1 ORDER BY id", workflow
        )
        return rows


async def notify(db_url: str, channel: str, payload: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("SELECT pg_notify($1, $2)", channel, payload)
    finally:
        await conn.close()


def settings(db_url: str) -> Settings:
    return Settings(
        database_url=SecretStr(db_url), worker_slots=2, poll_interval_s=0.2, http_port=0
    )


async def test_notifications_start_runs_once_each_and_end_a_sensors_wait(
    pg_listen: None, db_url: str, tmp_path: Path
) -> None:
    (tmp_path / "orders.yaml").write_text(ORDERS)
    (tmp_path / "shipped.yaml").write_text(SHIPPED)
    loaded = load_path(tmp_path, base=builtin_registry().merged(handlers()))
    assert loaded.errors == []
    s = settings(db_url)
    [source] = [src for src in create_sources(s) if isinstance(src, PgListenSource)]
    async with Orchestrator(
        s,
        db_url,
        registry=loaded.handlers,
        workflows=loaded.workflows.values(),
        sources=[source],
    ) as orch:
        assert orch.db is not None and orch.engine is not None

        # The trigger's channel and the one the sensor waits on.
        async def listening_on_both() -> bool:
            return source.listening == {"orders", "shipments"}

        await eventually(listening_on_both, what="LISTEN on both channels")

        await notify(db_url, "orders", '{"id": "a", "n": 1}')
        await notify(db_url, "orders", '{"id": "a", "n": 1}')  # the same notification again
        await notify(db_url, "orders", '{"id": "b", "n": 2}')
        await notify(db_url, "orders", "not json")
        db = orch.db

        async def all_taken() -> bool:
            # The four notifications: three events (one a repeat) and a dead letter.
            return await _count(db, "SELECT count(*) FROM dead_letter_events") == 1 and (
                await _count(db, "SELECT count(*) FROM events WHERE source = 'pg_listen'") == 2
            )

        await eventually(all_taken, what="the notifications taken in")
        runs = await runs_of(orch.db, "on_notify")
        assert sorted(orjson.loads(r["params"])["n"] for r in runs) == [1, 2]
        ended = await wait_for_runs(orch.db, [r["id"] for r in runs], timeout=30)
        assert set(ended.values()) == {RunState.SUCCESS}

        waiting = await orch.engine.trigger("await_shipment", {"order": "A-1"})
        await notify(db_url, "shipments", '{"id": "s1", "order": "B-9", "carrier": "ups"}')
        await notify(db_url, "shipments", '{"id": "s2", "order": "A-1", "carrier": "dhl"}')
        assert await wait_for_runs(orch.db, [waiting], timeout=30) == {waiting: RunState.SUCCESS}
        async with orch.db.pool.acquire() as conn:
            output = await conn.fetchval(
                "SELECT output FROM task_instances WHERE run_id = $1 AND task_id = 'after'",
                waiting,
            )
            # Written by the plugin's own named query, in its own table.
            rows = await conn.fetch(sql("pg_listen_counts"))
        counts = {r["channel"]: r["notifications"] for r in rows}
        assert "dhl" in output
        assert counts == {"orders": 3, "shipments": 2}


async def _count(db: Database, query: str) -> int:
    async with db.pool.acquire() as conn:
        count: int = await conn.fetchval(query)
        return count


def test_a_bad_trigger_of_the_plugin_names_file_workflow_and_field(
    pg_listen: None, tmp_path: Path
) -> None:
    (tmp_path / "bad.yaml").write_text(ORDERS.replace("channel: orders", "channel: Not Valid"))
    result = load_path(tmp_path, base=builtin_registry())
    [error] = result.errors
    text = error.describe()
    assert str(tmp_path / "bad.yaml") in text
    assert "workflow 'on_notify'" in text
    assert "triggers.0.pg_listen.channel" in text


def test_without_the_plugin_the_source_is_unknown(tmp_path: Path) -> None:
    (tmp_path / "orders.yaml").write_text(ORDERS)
    [error] = load_path(tmp_path, base=builtin_registry()).errors
    assert "'pg_listen'" in error.describe()
    assert "'kafka'" in error.describe()  # the sources that are installed


async def test_the_plugins_command_is_part_of_the_cli(pg_listen: None, db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    got: asyncio.Queue[str] = asyncio.Queue()
    try:
        await conn.add_listener("hello", lambda *args: got.put_nowait(args[3]))
        result = await asyncio.to_thread(
            CliRunner().invoke,
            main,
            ["pg-notify", "hello", '{"id": "x"}'],
            env={"ORCHESTRATOR_DATABASE_URL": db_url},
        )
        assert result.exit_code == 0, result.output
        assert "notified hello" in result.output
        assert await asyncio.wait_for(got.get(), timeout=10) == '{"id": "x"}'
    finally:
        await conn.close()


def test_the_command_is_listed_only_while_the_plugin_is_installed() -> None:
    assert "pg-notify" not in CliRunner().invoke(main, ["--help"]).output
    with source_registry().added("pg_listen", plugin):
        assert "pg-notify" in CliRunner().invoke(main, ["--help"]).output
