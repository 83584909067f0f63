"""Dead letters: listed, shown (secrets masked) and redriven after a workflow
fix, exactly once, with an audit entry; over the API, the CLI and in code."""

from __future__ import annotations

import asyncio
import getpass
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import aiohttp
import orjson
import pytest
from cli_process import cli_runner
from suite_settings import suite_settings

from handlers import builtin_registry
from orchestrator import audit
from orchestrator.app import Orchestrator
from orchestrator.clock import ManualClock
from orchestrator.dead_letters import (
    UnknownDeadLetterError,
    dead_letter,
    dead_letters,
    pending_ids,
    redrive,
)
from orchestrator.engine import Engine
from orchestrator.intake import DeadLetter, Intake
from orchestrator.spec import TaskSpec, WorkflowSpec
from orchestrator.store import Database
from sources.models import KafkaTrigger, WebhookTrigger

pytestmark = pytest.mark.timeout(60)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
settings = partial(suite_settings, worker_slots=0, intake_batch_delay_s=0.002)


def orders(order_type: str, topic: str = "orders") -> WorkflowSpec:
    """The `orders` workflow; version "integer" refuses the order ids partners send."""
    return WorkflowSpec(
        name="orders",
        params={"order_id": {"type": order_type, "required": True}},
        tasks=(TaskSpec(id="t", handler="noop"),),
        triggers=(
            WebhookTrigger(hook="orders", auth="none", params={"order_id": "{{ payload.id }}"}),
            KafkaTrigger(topic=topic, params={"order_id": "{{ payload.id }}"}),
        ),
    )


BROKEN, FIXED = orders("integer"), orders("string")


@dataclass
class Server:
    orch: Orchestrator
    client: aiohttp.ClientSession
    db: Database

    @property
    def engine(self) -> Engine:
        assert self.orch.engine is not None
        return self.orch.engine

    async def hook(self, body: dict[str, Any], delivery: str) -> dict[str, Any]:
        async with self.client.post(
            "/hooks/orders",
            data=orjson.dumps(body),
            headers={"Content-Type": "application/json", "Idempotency-Key": delivery},
        ) as resp:
            assert resp.status == 202, await resp.text()
            answer: dict[str, Any] = await resp.json()
            return answer

    async def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        kwargs: dict[str, Any] = {}
        if body is not None:
            kwargs = {"data": orjson.dumps(body), "headers": {"Content-Type": "application/json"}}
        async with self.client.request(method, path, **kwargs) as resp:
            return resp.status, await resp.json(content_type=None)

    async def runs(self) -> list[dict[str, Any]]:
        async with self.db.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT id, workflow, params::text AS params, event_id FROM runs ORDER BY id"
            )
        return [{**dict(r), "params": orjson.loads(r["params"])} for r in rows]


@pytest.fixture
async def server(db_url: str, db: Database) -> AsyncIterator[Server]:
    from sources.webhook import WebhookSource

    async with Orchestrator(
        settings(),
        db_url,
        registry=builtin_registry(),
        workflows=[BROKEN],
        sources=[WebhookSource()],
        http=True,
        clock=ManualClock(NOW),
    ) as orch:
        assert orch.http is not None
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{orch.http.port}") as client:
            yield Server(orch, client, db)


async def test_a_webhook_refused_by_a_broken_workflow_is_redriven_once_after_the_fix(
    server: Server,
) -> None:
    answer = await server.hook({"id": "A-17"}, "d-1")
    assert answer["run_ids"] == []
    [letter] = await dead_letters(server.engine)
    assert (letter.source, letter.channel, letter.workflow) == ("webhook", "orders", "orders")
    assert letter.event_id == answer["event_id"] and "'order_id'" in letter.reason

    # Before the fix, a redrive fails again: the letter stays, with the new error.
    [still] = await redrive(server.engine, [letter.id], actor="cli:ana", reason="try")
    assert not still.ok and "still refused (attempt 1)" in still.message
    assert "'order_id'" in still.message
    again = await dead_letter(server.engine, letter.id)
    assert again.attempts == 1 and again.redriven_at is None
    assert await server.runs() == []

    await server.orch.register([FIXED])
    [done] = await redrive(server.engine, [letter.id], actor="cli:ana", reason="order ids fixed")
    assert done.ok and not done.already and done.event_id == answer["event_id"]
    [run] = await server.runs()
    assert done.run_ids == [run["id"]]
    assert run["params"] == {"order_id": "A-17"} and run["event_id"] == answer["event_id"]
    # The event names the run: a replay of the delivery answers with it.
    assert (await server.hook({"id": "A-17"}, "d-1"))["run_ids"] == [run["id"]]

    [twice] = await redrive(server.engine, [letter.id], actor="cli:bo")
    assert twice.ok and twice.already and "nothing started" in twice.message
    assert len(await server.runs()) == 1
    shown = await dead_letter(server.engine, letter.id)
    assert shown.redriven_by == "cli:ana" and shown.redrive_run_ids == [run["id"]]
    assert shown.attempts == 2
    assert await pending_ids(server.engine) == []

    entries = await audit.entries(server.engine.db, action="redrive")
    assert [(e.actor, e.reason, e.detail["outcome"]) for e in entries] == [
        ("cli:ana", "order ids fixed", "redriven"),
        ("cli:ana", "try", "still refused"),
    ]
    assert entries[0].run_id == run["id"] and entries[0].workflow == "orders"


async def test_concurrent_redrives_of_the_same_letters_start_each_run_once(
    server: Server,
) -> None:
    for n in range(5):
        await server.hook({"id": f"B-{n}"}, f"d-{n}")
    await server.orch.register([FIXED])
    ids = await pending_ids(server.engine)
    assert len(ids) == 5
    results = await asyncio.gather(
        *(redrive(server.engine, ids, actor=f"cli:{who}") for who in ("ana", "bo", "cy"))
    )
    runs = await server.runs()
    assert sorted(r["params"]["order_id"] for r in runs) == [f"B-{n}" for n in range(5)]
    fresh = [r for result in results for r in result if not r.already]
    assert len(fresh) == 5 and all(r.ok for result in results for r in result)
    assert len(await audit.entries(server.engine.db, action="redrive")) == 5


async def test_a_message_the_source_refused_is_recorded_as_an_event_when_redriven(
    server: Server,
) -> None:
    intake = Intake(server.engine)
    headers = {"x-signature": "s3cr3t", "trace": "t-1"}
    broken = DeadLetter(
        "kafka",
        "orders",
        "kafka:c/t:orders:0:7",
        "message is not JSON",
        raw='{"id": "C-1"',
        headers=headers,
    )
    fixable = DeadLetter(
        "kafka",
        "orders",
        "kafka:c/t:orders:0:8",
        "PostgreSQL cannot store this message",
        raw='{"id": "C-2"}',
        headers=headers,
    )
    await intake.ingest([], dead_letters=[broken, fixable])
    second, first = await dead_letters(server.engine, source="kafka")
    shown = await dead_letter(server.engine, first.id)
    assert shown.headers == {"x-signature": "***", "trace": "t-1"}
    assert shown.payload == '{"id": "C-1"' and shown.event_id is None

    await server.orch.register([FIXED])
    still, done = await redrive(server.engine, [first.id, second.id], actor="cli:ana")
    assert not still.ok and "still not JSON" in still.message
    assert done.ok and done.event_id is not None and len(done.run_ids) == 1
    [run] = await server.runs()
    assert run["event_id"] == done.event_id and run["params"] == {"order_id": "C-2"}
    async with server.db.pool.acquire() as conn:
        key = await conn.fetchval("SELECT dedup_key FROM events WHERE id = $1", done.event_id)
    assert key == "kafka:c/t:orders:0:8"


async def test_unknown_ids_are_refused_before_anything_is_redriven(server: Server) -> None:
    await server.hook({"id": "D-1"}, "d-1")
    await server.orch.register([FIXED])
    [letter_id] = await pending_ids(server.engine)
    with pytest.raises(UnknownDeadLetterError, match="no dead letter 999"):
        await redrive(server.engine, [letter_id, 999], actor="cli:ana")
    assert await server.runs() == []
    assert await pending_ids(server.engine) == [letter_id]


async def test_the_api_lists_shows_and_redrives_and_names_what_is_wrong(server: Server) -> None:
    await server.hook({"id": "E-1"}, "d-1")
    await Intake(server.engine).ingest(
        [], dead_letters=[DeadLetter("kafka", "other", "kafka:x:1", "not JSON", raw="{")]
    )
    status, body = await server.api("GET", "/api/v1/dead-letters")
    assert status == 200 and [d["source"] for d in body["items"]] == ["kafka", "webhook"]
    status, body = await server.api("GET", "/api/v1/dead-letters?source=webhook&workflow=orders")
    [hooked] = body["items"]
    status, body = await server.api("GET", "/api/v1/dead-letters?workflow=nope")
    assert body == {"items": [], "next": None}
    status, body = await server.api("GET", f"/api/v1/dead-letters?cursor={hooked['id']}")
    assert body == {"items": [], "next": None}
    # Pages: the next link keeps the filters.
    status, body = await server.api("GET", "/api/v1/dead-letters?limit=1&redriven=false")
    assert [d["source"] for d in body["items"]] == ["kafka"]
    assert body["next"] is not None and "redriven=false" in body["next"]
    status, body = await server.api("GET", body["next"])
    assert [d["id"] for d in body["items"]] == [hooked["id"]] and body["next"] is None
    status, shown = await server.api("GET", f"/api/v1/dead-letters/{hooked['id']}")
    assert status == 200 and shown["payload"] == {"id": "E-1"} and "'order_id'" in shown["error"]

    bad = [
        ("GET", "/api/v1/dead-letters/abc", None, 400, "id must be an integer"),
        ("GET", "/api/v1/dead-letters/99999", None, 404, "no dead letter 99999"),
        ("GET", "/api/v1/dead-letters?limit=0", None, 400, "'limit'"),
        ("GET", "/api/v1/dead-letters?redriven=maybe", None, 400, "'redriven'"),
        ("GET", "/api/v1/dead-letters?cursor=0", None, 400, "'cursor'"),
        ("POST", "/api/v1/dead-letters/redrive", {}, 400, "give 'ids'"),
        ("POST", "/api/v1/dead-letters/redrive", [1], 400, "must be a JSON object"),
        ("POST", "/api/v1/dead-letters/redrive", {"ids": [1], "all": True}, 400, "give 'ids'"),
        ("POST", "/api/v1/dead-letters/redrive", {"ids": ["x"]}, 400, "ids.0: "),
        ("POST", "/api/v1/dead-letters/redrive", {"ids": [99999]}, 404, "no dead letter 99999"),
        ("POST", "/api/v1/dead-letters/redrive", {"idz": [1]}, 400, "idz: unexpected key"),
        ("POST", "/api/v1/dead-letters/redrive", {"ids": [1], "workflow": "x"}, 400, "'all'"),
        ("POST", "/api/v1/dead-letters/redrive", {"all": True, "reason": 5}, 400, "reason: "),
        ("POST", "/api/v1/dead-letters/redrive", {"all": 1}, 400, "all: "),
        ("POST", "/api/v1/dead-letters/redrive", {"ids": [True]}, 400, "ids.0: "),
    ]
    for method, path, body, want, detail in bad:
        status, problem = await server.api(method, path, body)
        assert (status, detail in problem["detail"]) == (want, True), (path, body, problem)
    for body, field in (
        ({}, "ids"),
        ({"ids": [1], "workflow": "x"}, "workflow"),
        ({"all": True, "reason": 5}, "reason"),
        ({"idz": [1]}, "idz"),
    ):
        status, problem = await server.api("POST", "/api/v1/dead-letters/redrive", body)
        assert problem["errors"][0] == {
            "in": "body",
            "name": field,
            "detail": problem["errors"][0]["detail"],
        }
    assert await server.runs() == []

    await server.orch.register([FIXED])
    status, body = await server.api(
        "POST", "/api/v1/dead-letters/redrive", {"all": True, "workflow": "orders", "reason": "fix"}
    )
    assert status == 200
    [done] = body["redriven"]
    assert done["id"] == hooked["id"] and done["redriven"] and len(done["run_ids"]) == 1
    status, body = await server.api("GET", "/api/v1/dead-letters?redriven=false")
    assert [d["source"] for d in body["items"]] == ["kafka"]
    [entry] = await audit.entries(server.engine.db, action="redrive")
    assert entry.actor.startswith("api:") and entry.reason == "fix"


@pytest.mark.timeout(120)  # a few CLI processes, each importing the package
def test_the_cli_lists_shows_and_redrives(db_url: str) -> None:
    async def prepare() -> int:
        from orchestrator.store import connect

        db = await connect(db_url, size=2, min_size=1)
        try:
            engine = Engine(db)
            await engine.register([BROKEN])
            from orchestrator.intake import Event, Router

            intake = Intake(engine, Router([BROKEN]))
            [answer] = await intake.ingest(
                [Event("webhook", "orders", "webhook:orders:z", {"id": "F-1"})]
            )
            await engine.register([FIXED])
            return answer.event_id
        finally:
            await db.close()

    event_id = asyncio.run(prepare())
    cli = cli_runner(db_url)

    listed = cli("dead-letters", "--source", "webhook")
    assert listed.returncode == 0, listed.stderr
    assert "orders" in listed.stdout and "'order_id'" in listed.stdout
    assert cli("dead-letters", "--source", "kafka").stdout.strip() == "no dead letters"
    letter_id = listed.stdout.splitlines()[2].split()[0]
    shown = cli("dead-letters", "show", letter_id)
    assert shown.returncode == 0, shown.stderr
    assert f"event      {event_id}" in shown.stdout and '"id": "F-1"' in shown.stdout
    missing = cli("dead-letters", "show", "99999")
    assert missing.returncode == 2 and "no dead letter 99999" in missing.stderr
    both = cli("dead-letters", "redrive", letter_id, "--all")
    assert both.returncode == 2 and "IDs or --all" in both.stderr
    done = cli("dead-letters", "redrive", "--all", "--reason", "types fixed")
    assert done.returncode == 0, done.stderr
    assert f"ok   {letter_id}: redriven as event {event_id}: started run" in done.stdout
    again = cli("dead-letters", "redrive", letter_id)
    assert again.returncode == 0 and "already redriven" in again.stdout
    assert cli("dead-letters", "redrive", "--all").stdout.strip() == "no dead letters to redrive"
    logged = cli("audit", "--action", "redrive")
    assert f"cli:{getpass.getuser()}" in logged.stdout and "types fixed" in logged.stdout


async def test_a_kafka_message_refused_by_a_broken_workflow_is_redriven_after_the_fix(
    db_url: str, db: Database, kafka_env: Any
) -> None:
    from eventually import eventually

    from sources.kafka import KafkaSource
    from sources.kafka_config import make_producer

    topic = await kafka_env.create_topic("orders")
    settings_ = kafka_env.settings()
    producer = make_producer(settings_, linger_ms=2)
    await producer.start()
    try:
        for value in (orjson.dumps({"id": "K-1"}), b"{not json"):
            await (await producer.send(topic, value, headers=[("x-api-key", b"k3y")]))
    finally:
        await producer.stop()
    source = KafkaSource(consumer_options=kafka_env.consumer_options)
    async with Orchestrator(
        settings_, db_url, workflows=[orders("integer", topic)], sources=[source]
    ) as orch:
        assert orch.engine is not None
        engine = orch.engine

        async def both_dead_lettered() -> bool:
            return len(await dead_letters(engine, source="kafka")) == 2

        await eventually(both_dead_lettered, timeout=30, what="two Kafka dead letters")
        letters = await dead_letters(engine, source="kafka")
        [raw] = [d for d in letters if d.workflow is None]
        [refused] = [d for d in letters if d.workflow is not None]
        assert refused.workflow == "orders" and refused.event_id is not None
        assert raw.workflow is None and "not JSON" in raw.reason
        assert (await dead_letter(engine, raw.id)).headers["x-api-key"] == "***"

        await orch.register([orders("string", topic)])
        results = await redrive(engine, await pending_ids(engine), actor="cli:ana", reason="fix")
        assert sorted((r.id, r.ok) for r in results) == sorted(
            [(refused.id, True), (raw.id, False)]
        )
        async with db.pool.acquire() as conn:
            runs = await conn.fetch("SELECT params->>'order_id' AS o, event_id FROM runs")
        assert [(r["o"], r["event_id"]) for r in runs] == [("K-1", refused.event_id)]
        [again] = await redrive(engine, [refused.id], actor="cli:ana")
        assert again.already
        assert len(await audit.entries(engine.db, action="redrive")) == 2


async def test_a_redrive_into_a_paused_workflow_is_refused_until_unpaused(
    server: Server,
) -> None:
    pausing = pytest.importorskip("orchestrator.pausing")
    await server.hook({"id": "P-1"}, "d-1")
    await server.orch.register([FIXED])
    [letter_id] = await pending_ids(server.engine)
    await pausing.pause_workflow(server.engine, "orders", actor="cli:ana", reason="outage")
    [held] = await redrive(server.engine, [letter_id], actor="cli:ana")
    assert not held.ok and "'orders' is paused" in held.message
    assert await server.runs() == []
    await pausing.unpause_workflow(server.engine, "orders", actor="cli:ana")
    [done] = await redrive(server.engine, [letter_id], actor="cli:ana")
    assert done.ok and len(done.run_ids) == 1
