"""Sensors woken by the real sources: a Kafka-protocol broker, the landing zone
on disk and callbacks over HTTP; and what ``show`` and ``runs`` say about waits.

The "early event" cases run an orchestrator without worker slots (it only takes
events in) while the event arrives, then a second one with a worker: the
sensor starts after its event was recorded, and must still end at once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from eventually import eventually
from suite_settings import suite_settings

from handlers import builtin_registry
from orchestrator.app import Orchestrator
from orchestrator.clock import SYSTEM_CLOCK
from orchestrator.context import TaskContext
from orchestrator.deferral import Defer
from orchestrator.intake import Event
from orchestrator.loader import load_path
from orchestrator.registry import HandlerRegistry
from orchestrator.run_waiter import wait_for_runs
from orchestrator.settings import Settings
from orchestrator.spec import TaskSpec, WorkflowSpec
from orchestrator.states import RunState
from orchestrator.store import Database
from orchestrator.views import runs_table, show_run
from sources.files import LandingSource
from sources.kafka import KafkaSource
from sources.kafka_publish import publish

SHOWN_TIME = re.compile(r"until (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})")


def fulfillment(topic: str) -> WorkflowSpec:
    """A Kafka sensor and nothing else on ``topic``: no trigger names it."""
    return WorkflowSpec(
        name="fulfill",
        tasks=(
            TaskSpec(
                id="shipped",
                handler="sensor.kafka",
                inputs={
                    "topic": topic,
                    "correlation": "payload.order_id",
                    "equals": "{{ params.order_id }}",
                    "timeout_s": 3600,
                },
            ),
            TaskSpec(
                id="notify",
                handler="echo",
                upstream=("shipped",),
                inputs={"carrier": "{{ upstream.shipped.payload.carrier }}"},
            ),
        ),
    )


EXACT = WorkflowSpec(
    name="exact",
    tasks=(TaskSpec(id="wait", handler="sensor.file", inputs={"path": "exact/{{ params.name }}"}),),
)
DAILY = WorkflowSpec(
    name="daily",
    tasks=(
        TaskSpec(id="wait", handler="sensor.file", inputs={"path": "in/{{ params.day }}/*.csv"}),
    ),
)


worker_settings = suite_settings


@asynccontextmanager
async def workers(db_url: str) -> AsyncIterator[Orchestrator]:
    """A second process-like orchestrator that only runs tasks."""
    async with Orchestrator(
        worker_settings(), db_url, registry=builtin_registry(), migrate=False
    ) as orch:
        yield orch


async def fetch(db: Database, query: str, *args: Any) -> list[Any]:
    async with db.pool.acquire() as conn:
        return list(await conn.fetch(query, *args))


async def states(db: Database, run_id: int) -> dict[str, str]:
    rows = await fetch(
        db, "SELECT task_id, state::text AS state FROM task_instances WHERE run_id = $1", run_id
    )
    return {r["task_id"]: r["state"] for r in rows}


async def task_row(db: Database, run_id: int, task_id: str) -> Any:
    [row] = await fetch(
        db,
        "SELECT state::text AS state, output::text AS output, error FROM task_instances"
        " WHERE run_id = $1 AND task_id = $2",
        run_id,
        task_id,
    )
    return row


async def output(db: Database, run_id: int, task_id: str) -> Any:
    return orjson.loads((await task_row(db, run_id, task_id))["output"])


async def wake_reason(db: Database, run_id: int, task_id: str) -> str:
    [row] = await fetch(
        db,
        "SELECT reason FROM transitions WHERE run_id = $1 AND task_id = $2"
        " AND from_state = 'deferred'",
        run_id,
        task_id,
    )
    return str(row["reason"])


def deferred(db: Database, run_ids: list[int], task_id: str) -> Any:
    async def probe() -> bool:
        found = [(await states(db, r))[task_id] for r in run_ids]
        return found == ["deferred"] * len(run_ids)

    return probe


def recorded(db: Database, source: str, channels: set[str]) -> Any:
    """Probe: every channel has an event (the transaction that wakes waits committed)."""

    async def probe() -> bool:
        rows = await fetch(db, "SELECT channel FROM events WHERE source = $1", source)
        return channels <= {r["channel"] for r in rows}

    return probe


def table(shown: str, title: str) -> dict[str, str]:
    """The rows of one table of ``show`` (``tasks``, ``waits:``), by first column."""
    blocks = shown.split("\n\n")
    if title == "tasks":
        block = blocks[1].splitlines()
    else:
        [block] = [b.splitlines()[1:] for b in blocks if b.startswith(title + "\n")]
    return {line.split()[0]: line for line in block[2:]}


def shown_until(line: str) -> datetime:
    found = SHOWN_TIME.search(line)
    assert found, line
    return datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)


def shipment(order_id: str, carrier: str = "dhl") -> dict[str, Any]:
    return {"order_id": order_id, "carrier": carrier}


# -- Kafka ---------------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_a_kafka_sensor_on_a_real_broker_matches_its_order_even_when_it_came_first(
    db_url: str, kafka_env: Any
) -> None:
    topic = await kafka_env.create_topic("shipments")
    spec = fulfillment(topic)
    settings = kafka_env.settings()  # no worker slots: this one only takes events in
    source = KafkaSource(consumer_options=kafka_env.consumer_options)
    async with Orchestrator(
        settings, db_url, registry=builtin_registry(), workflows=[spec], sources=[source]
    ) as intake:
        assert intake.engine is not None and intake.db is not None
        db = intake.db
        # No trigger names the topic; the sensor alone makes it consumed.
        assert source.topics == (topic,)
        early = await intake.engine.trigger("fulfill", {"order_id": "E-1"})
        late = await intake.engine.trigger("fulfill", {"order_id": "L-1"})
        # The early shipment is recorded before any worker starts its sensor.
        await publish(settings, topic, [shipment("E-1", "ups")])
        await eventually(recorded(db, "kafka", {topic}), timeout=30, what="E-1 recorded")
        assert (await states(db, early))["shipped"] == "queued"
        [event] = await fetch(db, "SELECT run_ids FROM events WHERE channel = $1", topic)
        assert list(event["run_ids"]) == []  # it started nothing: only a sensor wants it

        async with workers(db_url):
            final = await wait_for_runs(db, [early], timeout=20)
            assert final[early] == RunState.SUCCESS
            assert await wake_reason(db, early, "shipped") == "event had already arrived"
            assert await output(db, early, "notify") == {"carrier": "ups"}

            await eventually(deferred(db, [late], "shipped"), what="L-1's sensor deferred")
            # Another order's shipment is consumed and recorded, and wakes nothing.
            await publish(settings, topic, [shipment("X-9", "fedex")])

            async def two_events() -> bool:
                rows = await fetch(db, "SELECT 1 FROM events WHERE channel = $1", topic)
                return len(rows) == 2

            await eventually(two_events, timeout=20, what="X-9 recorded")
            assert (await states(db, late))["shipped"] == "deferred"
            [wait] = await fetch(db, "SELECT state FROM deferrals WHERE run_id = $1", late)
            assert wait["state"] == "waiting"

            await publish(settings, topic, [shipment("L-1", "dpd")])
            final = await wait_for_runs(db, [late], timeout=20)
            assert final[late] == RunState.SUCCESS
            assert await output(db, late, "notify") == {"carrier": "dpd"}
            assert (await wake_reason(db, late, "shipped")).endswith("arrived")


@pytest.mark.timeout(120)
async def test_a_kafka_sensor_is_woken_by_a_message_at_an_offset_seen_before_a_broker_restart(
    db_url: str, own_kafka: Any
) -> None:
    env = own_kafka.env
    topic = await env.create_topic("shipments")
    spec = fulfillment(topic)
    settings = env.settings(worker_slots=4, poll_interval_s=0.2)
    source = KafkaSource(consumer_options=env.consumer_options)
    async with Orchestrator(
        settings, db_url, registry=builtin_registry(), workflows=[spec], sources=[source]
    ) as orch:
        assert orch.engine is not None and orch.db is not None
        db = orch.db
        waiting = await orch.engine.trigger("fulfill", {"order_id": "R-2"})
        await eventually(deferred(db, [waiting], "shipped"), what="R-2's sensor deferred")
        # Another order's shipment at offset 0: recorded, wakes nothing.
        assert await publish(settings, topic, [shipment("R-1", "ups")]) == [(0, 0)]
        await eventually(recorded(db, "kafka", {topic}), timeout=30, what="R-1 recorded")

        # The broker restarts with an empty log: R-2's shipment is at offset 0 again.
        await own_kafka.restart()
        await env.create_topic("shipments")
        assert await publish(settings, topic, [shipment("R-2", "dpd")]) == [(0, 0)]
        final = await wait_for_runs(db, [waiting], timeout=60)
        assert final[waiting] == RunState.SUCCESS
        assert await output(db, waiting, "notify") == {"carrier": "dpd"}
        assert (await wake_reason(db, waiting, "shipped")).endswith("arrived")


# -- landing zone --------------------------------------------------------------------------


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.mark.timeout(60)
async def test_file_sensors_on_the_landing_zone_see_files_landed_before_and_after(
    db_url: str, tmp_path: Path
) -> None:
    zone = tmp_path / "landing"
    settings = Settings(worker_slots=0, landing_dir=zone, landing_rescan_s=1.0, http_port=0)
    source = LandingSource(default_quiet_s=0.2)
    async with Orchestrator(
        settings, db_url, registry=builtin_registry(), workflows=[EXACT, DAILY], sources=[source]
    ) as intake:
        assert intake.engine is not None and intake.db is not None
        db = intake.db
        before = await intake.engine.trigger("daily", {"day": "2026-03-01"})
        # Landed after the run was created, before its sensor started.
        write(zone / "in/2026-03-01/sales.csv", b"id,amount\n1,9.5\n")
        await eventually(
            recorded(db, "file", {"in/2026-03-01/sales.csv"}), timeout=20, what="sales.csv"
        )
        assert (await states(db, before))["wait"] == "queued"

        async with workers(db_url):
            assert (await wait_for_runs(db, [before], timeout=20))[before] == RunState.SUCCESS
            assert await wake_reason(db, before, "wait") == "event had already arrived"
            assert (await output(db, before, "wait"))["meta"]["path"] == "in/2026-03-01/sales.csv"

            exact = await intake.engine.trigger("exact", {"name": "orders.csv"})
            day2 = await intake.engine.trigger("daily", {"day": "2026-03-02"})
            await eventually(deferred(db, [exact, day2], "wait"), what="both sensors deferred")
            # None of these match: `*` stays within its directory, the suffix
            # is .csv, and an exact path means exactly that path.
            near_misses = {"in/2026-03-02/sub/deep.csv", "in/2026-03-02/notes.txt", "exact/orders"}
            for rel in near_misses:
                write(zone / rel, b"not this one\n")
            await eventually(recorded(db, "file", near_misses), timeout=20, what="near misses")
            assert (await states(db, exact))["wait"] == "deferred"
            assert (await states(db, day2))["wait"] == "deferred"

            write(zone / "exact/orders.csv", b"order\nA-1\n")
            write(zone / "in/2026-03-02/sales-eu.csv", b"id,amount\n2,3.0\n")
            final = await wait_for_runs(db, [exact, day2], timeout=20)
            assert final == {exact: RunState.SUCCESS, day2: RunState.SUCCESS}
            got = await output(db, exact, "wait")
            assert got["meta"]["path"] == "exact/orders.csv" and got["meta"]["size"] == 10
            assert (await output(db, day2, "wait"))["meta"]["path"] == "in/2026-03-02/sales-eu.csv"
            assert (await wake_reason(db, day2, "wait")).endswith("arrived")


# -- callbacks over HTTP: the partner_approval example -------------------------------------


@asynccontextmanager
async def partner_approval(
    db_url: str, examples_dir: Path
) -> AsyncIterator[tuple[Orchestrator, str]]:
    loaded = load_path(examples_dir / "partner_approval.yaml", base=builtin_registry())
    assert loaded.ok, loaded.errors
    async with Orchestrator(
        worker_settings(),
        db_url,
        registry=loaded.handlers,
        workflows=loaded.workflows.values(),
        http=True,
    ) as orch:
        assert orch.http is not None
        yield orch, f"http://127.0.0.1:{orch.http.port}"


async def callback_url(orch: Orchestrator, run_id: int) -> tuple[str, str]:
    """Wait until the run's approval is deferred; its URL as ``show`` prints it."""
    assert orch.db is not None
    await eventually(deferred(orch.db, [run_id], "await_approval"), what="approval deferred")
    shown = await show_run(orch.db, run_id)
    found = re.search(r"a callback: POST (/api/v1/callbacks/[A-Za-z0-9_-]{40,})", shown)
    assert found, shown
    return found.group(1), shown


async def post(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    async with http.post(url, json=body) as resp:
        return resp.status, await resp.json()


async def test_the_partner_approval_example_over_http(
    db_url: str, examples_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with partner_approval(db_url, examples_dir) as (orch, base):
        assert orch.engine is not None and orch.db is not None
        started = SYSTEM_CLOCK.now()
        run = await orch.engine.trigger(
            "partner_approval", {"partner": "globex", "request": "R-17"}
        )
        # `show` (an operator asking) has the URL, and says until when it waits.
        url, shown = await callback_url(orch, run)
        token = url.rsplit("/", 1)[1]
        # The logs say a callback is awaited, with the token masked: whoever
        # reads logs must not be able to complete the wait.
        masked = f"waiting for a callback: POST /api/v1/callbacks/{token[:4]}…"
        assert any(masked in r.getMessage() for r in caplog.records)
        assert not [r.getMessage() for r in caplog.records if token in r.getMessage()]
        # Nor does the history: the timeline and the run as the API describes it.
        assert token not in shown.split("timeline:")[1]
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{base}/api/v1/runs/{run}") as resp,
        ):
            assert token not in await resp.text()
        line = table(shown, "tasks")["await_approval"]
        assert "deferred" in line and f"waiting for a callback: POST {url}" in line
        assert "(then skipped)" in line
        assert abs(shown_until(line) - (started + timedelta(days=3))) < timedelta(minutes=1)

        async with aiohttp.ClientSession() as http:
            status, body = await post(http, base + url, {"output": {"approved_by": "ada"}})
            assert status == 202 and body["status"] == "success"
            assert (await wait_for_runs(orch.db, [run], timeout=20))[run] == RunState.SUCCESS
            # The token worked once; a replay changes nothing.
            status, body = await post(http, base + url, {"output": {"approved_by": "mallory"}})
            assert status == 404 and "used" in body["error"]
        decision = await output(orch.db, run, "record_decision")
        assert decision["approved_by"] == "ada"
        assert decision["message"] == "request R-17 for globex approved by ada"
        after = await show_run(orch.db, run)
        assert "SUCCESS" in after.splitlines()[0]
        wait = table(after, "waits:")["await_approval"]
        assert "resolved" in wait and "success at" in wait and "by callback:" in wait
        assert token not in after  # a used token is not shown again
    assert not [r.getMessage() for r in caplog.records if token in r.getMessage()]


async def test_a_failure_callback_fails_the_task_and_spends_the_token(
    db_url: str, examples_dir: Path
) -> None:
    async with partner_approval(db_url, examples_dir) as (orch, base):
        assert orch.engine is not None and orch.db is not None
        run = await orch.engine.trigger("partner_approval", {"request": "R-18"})
        url, _ = await callback_url(orch, run)
        async with aiohttp.ClientSession() as http:
            status, _ = await post(http, base + url, {"status": "failed", "error": "declined"})
            assert status == 202
            assert (await wait_for_runs(orch.db, [run], timeout=20))[run] == RunState.FAILED
            status, _ = await post(http, base + url, {"status": "success"})
            assert status == 404
        approval = await task_row(orch.db, run, "await_approval")
        assert approval["state"] == "failed" and approval["error"] == "declined"
        assert (await states(orch.db, run))["record_decision"] == "upstream_failed"


# -- what `show` and `runs` say ------------------------------------------------------------


async def remind(ctx: TaskContext) -> None:
    """A handler that waits for a time (the triggerer, not tested here, wakes it)."""
    raise Defer(
        "time",
        "the reminder hour",
        wake_at=SYSTEM_CLOCK.now() + timedelta(hours=1),
        timeout_s=7200,
    )


async def test_show_and_runs_tell_what_deferred_tasks_wait_for_and_until_when(
    db_url: str,
) -> None:
    registry: HandlerRegistry = builtin_registry()
    registry.register("remind", remind)
    waits = WorkflowSpec(
        name="waits",
        tasks=(
            TaskSpec(
                id="shipped",
                handler="sensor.kafka",
                inputs={
                    "topic": "shipments",
                    "correlation": "payload.order_id",
                    "equals": "{{ params.order_id }}",
                    "timeout_s": 86400,
                },
            ),
            TaskSpec(id="landed", handler="sensor.file", inputs={"path": "in/*.csv"}),
            TaskSpec(id="reminded", handler="remind"),
        ),
    )
    plain = WorkflowSpec(name="plain", tasks=(TaskSpec(id="t", handler="noop"),))
    async with Orchestrator(
        worker_settings(), db_url, registry=registry, workflows=[waits, plain]
    ) as orch:
        assert orch.engine is not None and orch.db is not None and orch.intake is not None
        db = orch.db
        started = SYSTEM_CLOCK.now()
        done = await orch.engine.trigger("plain")
        run = await orch.engine.trigger("waits", {"order_id": "A-1"})
        await wait_for_runs(db, [done], timeout=20)
        for task in ("shipped", "landed", "reminded"):
            await eventually(deferred(db, [run], task), what=f"{task} deferred")

        shown = await show_run(db, run)
        tasks = table(shown, "tasks")
        shipped = tasks["shipped"]
        assert "waiting for a message on shipments with payload.order_id = 'A-1'" in shipped
        assert abs(shown_until(shipped) - (started + timedelta(days=1))) < timedelta(minutes=1)
        assert "(then failed)" in shipped
        assert "waiting for a file in/*.csv in the landing zone, no timeout" in tasks["landed"]
        reminded = tasks["reminded"]
        assert "waiting for the reminder hour" in reminded and "wake at " in reminded
        waits_now = table(shown, "waits:")
        assert set(waits_now) == {"shipped", "landed", "reminded"}
        assert all(" waiting " in line for line in waits_now.values())
        assert "timeline:" in shown

        listed = await runs_table(db, workflow=None, state=None, limit=10)
        header, _rule, *rows = listed.splitlines()
        assert header.split()[:4] == ["RUN", "WORKFLOW", "STATE", "WAITING"]
        by_run = {int(r.split()[0]): r.split() for r in rows}
        assert by_run[run][1:4] == ["waits", "running", "3"]
        assert by_run[done][1:4] == ["plain", "success", "0"]

        # One wait ends: the count drops, and `show` keeps it as history.
        await orch.intake.ingest(
            [
                Event(
                    source="kafka",
                    channel="shipments",
                    dedup_key="kafka:shipments:0:1",
                    payload={"order_id": "A-1"},
                )
            ]
        )
        listed = await runs_table(db, workflow="waits", state=None, limit=10)
        assert listed.splitlines()[2].split()[1:4] == ["waits", "running", "2"]
        shown = await show_run(db, run)
        assert table(shown, "tasks")["shipped"].split()[1] == "success"
        ended = table(shown, "waits:")["shipped"]
        assert "resolved" in ended and "success at" in ended and "by intake" in ended
