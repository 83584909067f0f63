"""Webhook intake over real HTTP against a real PostgreSQL.

Every request goes through the orchestrator's aiohttp server on a free port;
every answer is checked against what the database holds afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from suite_settings import suite_settings

from handlers import builtin_registry
from orchestrator.app import Orchestrator
from orchestrator.clock import ManualClock
from orchestrator.errors import UnknownRunError
from orchestrator.intake import Accepted, Event
from orchestrator.loader import load_path
from orchestrator.signatures import sign_github, sign_standard, standard_headers
from orchestrator.spec import TaskSpec, WorkflowSpec
from orchestrator.store import Database, database_name
from orchestrator.views import show_run
from sources.models import WebhookTrigger
from sources.webhook import SALES_EXAMPLE, WebhookSource, dev_banner

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
T0 = int(NOW.timestamp())


def whsec(raw: bytes) -> str:
    return "whsec_" + base64.b64encode(raw).decode()


OLD = whsec(b"sales-old-key-0123456789ab")
NEW = whsec(b"sales-new-key-0123456789ab")
STRANGER = whsec(b"not-our-key-0123456789abcd")
GITHUB_SECRET = "gh-hook-secret"
TOKEN = "tok-4f1c9a0e7d"


def flow(name: str, *triggers: WebhookTrigger) -> WorkflowSpec:
    return WorkflowSpec(name=name, tasks=(TaskSpec(id="t", handler="noop"),), triggers=triggers)


WORKFLOWS = [
    flow(
        "sales_orders",
        WebhookTrigger(
            hook="sales",
            params={
                "order_id": "{{ payload.order.id }}",
                "amount": "{{ payload.order.amount }}",
                "delivery": "{{ meta.delivery_id }}",
            },
        ),
    ),
    flow("gh_push", WebhookTrigger(hook="gh", auth="github", params={"ref": "{{ payload.ref }}"})),
    flow("tok_flow", WebhookTrigger(hook="tok", auth="bearer", params={"n": "{{ payload.n }}"})),
    flow("clash_a", WebhookTrigger(hook="clash", auth="standard")),
    flow("clash_b", WebhookTrigger(hook="clash", auth="bearer")),
    flow("unset_flow", WebhookTrigger(hook="unset")),
]


@dataclass
class Server:
    orch: Orchestrator
    client: aiohttp.ClientSession
    source: WebhookSource
    db: Database

    async def count(self, table: str) -> int:
        async with self.db.pool.acquire() as conn:
            n: int = await conn.fetchval(f"SELECT count(*) FROM {table}")
            return n

    async def run(self, run_id: int) -> dict[str, Any]:
        async with self.db.pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT workflow, params::text AS params, event_id FROM runs WHERE id = $1", run_id
            )
        assert row is not None, f"run {run_id} is not in the database"
        return {**dict(row), "params": orjson.loads(row["params"])}

    async def event(self, event_id: int) -> dict[str, Any]:
        async with self.db.pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT dedup_key, payload::text AS payload, headers::text AS headers,"
                " meta::text AS meta, run_ids FROM events WHERE id = $1",
                event_id,
            )
        assert row is not None, f"event {event_id} is not in the database"
        return {
            "dedup_key": row["dedup_key"],
            "payload": orjson.loads(row["payload"]),
            "headers": orjson.loads(row["headers"]),
            "meta": orjson.loads(row["meta"]),
            "run_ids": list(row["run_ids"]),
        }

    async def post(
        self, hook: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, dict[str, Any], Any]:
        async with self.client.post(f"/hooks/{hook}", data=body, headers=headers) as resp:
            return resp.status, dict(resp.headers), await resp.json()


settings = partial(
    suite_settings,
    worker_slots=0,
    max_payload_bytes=4096,
    webhook_tolerance_s=300,
    intake_batch_delay_s=0.002,
    db_pool_size=4,
)


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRATOR_WEBHOOK_SECRET_SALES", f"{OLD} {NEW}")
    monkeypatch.setenv("ORCHESTRATOR_WEBHOOK_SECRET_GH", GITHUB_SECRET)
    monkeypatch.setenv("ORCHESTRATOR_WEBHOOK_SECRET_TOK", TOKEN)
    monkeypatch.setenv("ORCHESTRATOR_WEBHOOK_SECRET_CLASH", TOKEN)
    monkeypatch.delenv("ORCHESTRATOR_WEBHOOK_SECRET_UNSET", raising=False)


async def start(
    db_url: str, db: Database, workflows: list[WorkflowSpec] = WORKFLOWS, **overrides: Any
) -> AsyncIterator[Server]:
    source = WebhookSource()
    async with Orchestrator(
        settings(**overrides),
        db_url,
        registry=builtin_registry(),
        workflows=workflows,
        sources=[source],
        http=True,
        clock=ManualClock(NOW),
    ) as orch:
        assert orch.http is not None
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{orch.http.port}") as client:
            yield Server(orch, client, source, db)


@pytest.fixture
async def server(db_url: str, db: Database, secrets: None) -> AsyncIterator[Server]:
    async for s in start(db_url, db):
        yield s


ORDER = orjson.dumps({"order": {"id": "A-17", "amount": 42.5}, "type": "order.created"})


def signed(
    body: bytes = ORDER, *, secret: str = NEW, msg_id: str = "msg_1", at: int = T0
) -> dict[str, str]:
    return {**standard_headers(secret, msg_id, at, body), "Content-Type": "application/json"}


# -- Standard Webhooks -------------------------------------------------------------


async def test_a_signed_delivery_is_stored_with_its_run_before_the_202(server: Server) -> None:
    headers = {**signed(msg_id="msg_ok"), "X-Request-Id": "r-1", "User-Agent": "svix"}
    status, _, answer = await server.post("sales", ORDER, headers)
    assert status == 202, answer
    assert set(answer) == {"event_id", "run_ids"} and len(answer["run_ids"]) == 1
    event = await server.event(answer["event_id"])
    assert event["dedup_key"] == "webhook:sales:msg_ok"
    assert event["payload"] == orjson.loads(ORDER)
    assert event["meta"] == {"hook": "sales", "delivery_id": "msg_ok"}
    assert event["run_ids"] == answer["run_ids"]
    assert event["headers"]["webhook-id"] == "msg_ok"
    assert event["headers"]["x-request-id"] == "r-1"
    assert "webhook-signature" not in event["headers"]
    run = await server.run(answer["run_ids"][0])
    assert run["workflow"] == "sales_orders" and run["event_id"] == answer["event_id"]
    assert run["params"] == {"order_id": "A-17", "amount": 42.5, "delivery": "msg_ok"}


async def test_a_replayed_delivery_gets_the_original_answer_and_starts_nothing(
    server: Server,
) -> None:
    first = await server.post("sales", ORDER, signed(msg_id="msg_dup"))
    # A retry by the sender: same id, new timestamp, so a new signature.
    again = await server.post("sales", ORDER, signed(msg_id="msg_dup", at=T0 + 30))
    assert first[0] == again[0] == 202
    assert again[2] == first[2]
    assert await server.count("events") == 1
    assert await server.count("runs") == 1


async def test_show_explains_any_run_id_a_replayed_delivery_skipped(server: Server) -> None:
    """A replay starts nothing, but its batch may have drawn a run id before it
    learned the delivery was known: `show` of such an id must say why it has no
    run, not look like lost data."""
    _, _, first = await server.post("sales", ORDER, signed(msg_id="msg_a"))
    for retry in range(1, 4):
        _, _, again = await server.post("sales", ORDER, signed(msg_id="msg_a", at=T0 + retry))
        assert again == first
    _, _, second = await server.post("sales", ORDER, signed(msg_id="msg_b"))
    [run_a], [run_b] = first["run_ids"], second["run_ids"]
    assert run_a < run_b and await server.count("runs") == 2
    for skipped in range(run_a + 1, run_b):
        with pytest.raises(UnknownRunError) as missing:
            await show_run(server.db, skipped)
        assert "not dense" in str(missing.value)
        assert f"The newest run is {run_b}" in str(missing.value)


@pytest.mark.parametrize("at", [T0 - 299, T0 + 299], ids=["just-inside-past", "just-inside-future"])
async def test_timestamps_just_inside_the_tolerance_are_accepted(server: Server, at: int) -> None:
    status, _, answer = await server.post("sales", ORDER, signed(at=at))
    assert status == 202, answer


@pytest.mark.parametrize("secret", [OLD, NEW], ids=["old", "new"])
async def test_both_secrets_are_accepted_during_a_rotation(server: Server, secret: str) -> None:
    status, _, answer = await server.post("sales", ORDER, signed(secret=secret))
    assert status == 202, answer


async def test_one_valid_entry_among_several_signatures_is_enough(server: Server) -> None:
    headers = signed(secret=NEW, msg_id="msg_multi")
    stale = sign_standard(STRANGER, "msg_multi", T0, ORDER)
    headers["webhook-signature"] = f"{stale} {headers['webhook-signature']} v1a,c2lnbmF0dXJl"
    status, _, answer = await server.post("sales", ORDER, headers)
    assert status == 202, answer


def _flip(text: str, index: int) -> str:
    swapped = "A" if text[index] != "A" else "B"
    return text[:index] + swapped + text[index + 1 :]


def _without(name: str) -> dict[str, str]:
    headers = signed()
    del headers[name]
    return headers


ORDER_REDUMPED = json.dumps(orjson.loads(ORDER), indent=2).encode()
ORDER_FLIPPED = ORDER.replace(b"42.5", b"42.6")

#: (body sent, headers sent, words the 401 reason must contain)
REFUSED: dict[str, tuple[bytes, dict[str, str], str]] = {
    "flipped-body-byte": (ORDER_FLIPPED, signed(), "matches"),
    "flipped-signature-byte": (
        ORDER,
        {**signed(), "webhook-signature": _flip(signed()["webhook-signature"], 10)},
        "matches",
    ),
    "wrong-secret": (ORDER, signed(secret=STRANGER), "matches"),
    "re-serialized-json": (ORDER_REDUMPED, signed(), "matches"),
    "missing-id": (ORDER, _without("webhook-id"), "missing webhook-id"),
    "missing-timestamp": (ORDER, _without("webhook-timestamp"), "missing webhook-timestamp"),
    "missing-signature": (ORDER, _without("webhook-signature"), "missing webhook-signature"),
    "stale": (ORDER, signed(at=T0 - 301), "301 s old"),
    "future": (ORDER, signed(at=T0 + 301), "in the future"),
}


@pytest.mark.parametrize("case", list(REFUSED))
async def test_a_bad_or_missing_signature_is_refused_and_stores_nothing(
    server: Server, case: str
) -> None:
    body, headers, reason = REFUSED[case]
    status, _, answer = await server.post("sales", body, headers)
    assert status == 401
    assert reason in answer["error"]
    for secret in (OLD, NEW):
        assert secret.removeprefix("whsec_") not in answer["error"]
    assert await server.count("events") == 0
    assert await server.count("runs") == 0


# -- GitHub and bearer ---------------------------------------------------------------

PUSH = b'{"ref": "refs/heads/main", "commits": []}'


async def test_github_deliveries(server: Server) -> None:
    good = {
        "X-Hub-Signature-256": sign_github(GITHUB_SECRET, PUSH),
        "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        "X-GitHub-Event": "push",
    }
    status, _, answer = await server.post("gh", PUSH, good)
    assert status == 202, answer
    event = await server.event(answer["event_id"])
    assert event["dedup_key"] == "webhook:gh:72d3162e-cc78-11e3-81ab-4c9367dc0958"
    assert event["headers"]["x-github-event"] == "push"
    assert "x-hub-signature-256" not in event["headers"]
    assert (await server.run(answer["run_ids"][0]))["params"] == {"ref": "refs/heads/main"}
    assert (await server.post("gh", PUSH, good))[2] == answer  # redelivery

    wrong = {**good, "X-Hub-Signature-256": sign_github("not-the-secret", PUSH)}
    wrong["X-GitHub-Delivery"] = "other"
    status, _, refused = await server.post("gh", PUSH, wrong)
    assert (status, refused["error"]) == (401, "X-Hub-Signature-256 does not match this body")
    missing = {"X-GitHub-Delivery": "third"}
    status, _, refused = await server.post("gh", PUSH, missing)
    assert (status, refused["error"]) == (401, "missing X-Hub-Signature-256 header")
    assert await server.count("events") == 1 and await server.count("runs") == 1


async def test_bearer_deliveries(server: Server) -> None:
    body = b'{"n": 3}'
    status, _, answer = await server.post(
        "tok", body, {"Authorization": f"Bearer {TOKEN}", "Idempotency-Key": "k-1"}
    )
    assert status == 202, answer
    event = await server.event(answer["event_id"])
    assert event["dedup_key"] == "webhook:tok:k-1"
    assert "authorization" not in event["headers"]
    assert event["headers"]["idempotency-key"] == "k-1"
    for headers, reason in [
        ({"Authorization": "Bearer tok-wrong"}, "bearer token is not valid for this hook"),
        ({}, "missing Authorization header"),
    ]:
        status, resp_headers, refused = await server.post("tok", body, headers)
        assert (status, refused["error"]) == (401, reason)
        assert resp_headers["WWW-Authenticate"] == "Bearer"
        assert TOKEN not in refused["error"]
    # Without any delivery id, each request is a new event.
    again = await server.post("tok", body, {"Authorization": f"Bearer {TOKEN}"})
    assert again[0] == 202 and again[2]["event_id"] != answer["event_id"]
    assert await server.count("events") == 2 and await server.count("runs") == 2


# -- malformed requests --------------------------------------------------------------


async def test_bodies_over_the_limit_are_refused_with_or_without_content_length(
    server: Server,
) -> None:
    big = orjson.dumps({"order": {"id": "x" * 5000}})
    status, _, answer = await server.post("sales", big, signed(big))
    assert status == 413 and "4096 bytes" in answer["error"]

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 1000

    # A generator body goes out chunked: no Content-Length, the limit holds while reading.
    async with server.client.post("/hooks/sales", data=chunks(), headers=signed()) as resp:
        assert resp.status == 413
        assert "Content-Length" not in resp.request_info.headers
    assert await server.count("events") == 0


async def test_invalid_json_is_refused_naming_the_position(server: Server) -> None:
    body = b'{"order": {"id": "A-1",}}'
    status, _, answer = await server.post("sales", body, signed(body))
    assert status == 400
    assert answer["error"].startswith("body is not valid JSON")
    assert "trailing comma is not allowed: line 1 column 23" in answer["error"]
    assert await server.count("events") == 0


async def test_unknown_hook_is_404(server: Server) -> None:
    status, _, answer = await server.post("nobody", ORDER, signed())
    assert (status, answer["error"]) == (404, "no webhook named 'nobody'")


async def test_conflicting_auth_and_missing_secret_refuse_the_hook(
    db_url: str, db: Database, secrets: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="sources.webhook")
    async for server in start(db_url, db):
        logged = [r.getMessage() for r in caplog.records]
        assert any("ORCHESTRATOR_WEBHOOK_SECRET_UNSET" in m for m in logged), logged
        assert any("conflicting auth" in m and "clash_b uses 'bearer'" in m for m in logged)
        status, _, answer = await server.post("clash", ORDER, signed())
        assert status == 500
        assert answer["error"] == (
            "webhook 'clash' has conflicting auth settings: "
            "clash_a uses 'standard', clash_b uses 'bearer'"
        )
        status, headers, answer = await server.post("unset", ORDER, signed())
        assert status == 503 and headers["Retry-After"]
        assert "not configured" in answer["error"]
        assert await server.count("events") == 0
    for record in caplog.records:
        for secret in (OLD, NEW, TOKEN, GITHUB_SECRET):
            assert secret not in record.getMessage()


# -- durability and group commit ------------------------------------------------------


@pytest.mark.timeout(60)
async def test_database_unavailable_is_503_and_nothing_is_stored(
    server: Server, pg_admin_url: str, db_url: str
) -> None:
    name = database_name(db_url)
    admin = await asyncpg.connect(pg_admin_url)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        status, headers, answer = await server.post("sales", ORDER, signed(msg_id="msg_down"))
        assert status == 503, answer
        assert headers["Retry-After"]
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
    async with server.orch.db.pool.acquire() as conn:  # type: ignore[union-attr]
        assert await conn.fetchval("SELECT count(*) FROM events") == 0
    # The sender retries the same delivery: now it is stored, once.
    status, _, answer = await server.post("sales", ORDER, signed(msg_id="msg_down"))
    assert status == 202, answer
    assert await server.count("events") == 1 and await server.count("runs") == 1


async def test_concurrent_requests_share_commits_and_each_gets_its_own_answer(
    db_url: str, db: Database, secrets: None
) -> None:
    async for server in start(db_url, db, intake_batch_delay_s=0.02):
        bodies = [orjson.dumps({"order": {"id": f"C-{i}", "amount": i}}) for i in range(120)]
        answers = await asyncio.gather(
            *(server.post("sales", b, signed(b, msg_id=f"msg_c{i}")) for i, b in enumerate(bodies))
        )
        assert [status for status, _, _ in answers] == [202] * 120
        event_ids = {a["event_id"] for _, _, a in answers}
        assert len(event_ids) == 120
        for i, (_, _, answer) in enumerate(answers):
            [run_id] = answer["run_ids"]
            run = await server.run(run_id)
            assert run["params"]["order_id"] == f"C-{i}"
            assert run["event_id"] == answer["event_id"]
        assert await server.count("runs") == 120
        batcher = server.source.batcher
        assert batcher is not None and batcher.events == 120
        assert batcher.batches < 60, f"{batcher.batches} commits for 120 requests"


async def test_an_unstorable_payload_is_refused_before_it_reaches_a_shared_commit(
    db_url: str, db: Database, secrets: None, caplog: pytest.LogCaptureFixture
) -> None:
    async for server in start(db_url, db, intake_batch_delay_s=0.05):
        bodies = [orjson.dumps({"order": {"id": f"P-{i}"}}) for i in range(20)]
        bodies[7] = b'{"order": {"id": "bad\\u0000id"}}'  # JSON, but not storable as jsonb
        bodies[9] = b'{"deep": ' + b"[" * 200 + b"]" * 200 + b"}"  # valid, but nested too deep
        answers = await asyncio.gather(
            *(server.post("sales", b, signed(b, msg_id=f"msg_p{i}")) for i, b in enumerate(bodies))
        )
        statuses = [status for status, _, _ in answers]
        assert statuses == [202] * 7 + [400, 202, 400] + [202] * 10
        assert answers[7][2]["error"] == (
            "the payload cannot be stored: body.order.id contains a NUL character (\\u0000), "
            "which PostgreSQL cannot store"
        )
        assert answers[7][2]["errors"][0]["name"] == "body.order.id"
        assert "nested deeper than 128 levels" in answers[9][2]["error"]
        assert await server.count("events") == 18 and await server.count("runs") == 18
        # Refused before the commit: no batch failed and had to be retried.
        assert not any("a webhook batch of" in r.getMessage() for r in caplog.records)


async def test_a_poison_event_fails_alone_and_its_batch_mates_are_stored(
    db_url: str, db: Database, secrets: None, caplog: pytest.LogCaptureFixture
) -> None:
    async for server in start(db_url, db, intake_batch_delay_s=0.05):
        batcher = server.source.batcher
        assert batcher is not None
        # The handler refuses the payloads it knows PostgreSQL cannot store; a
        # poison event that gets past it anyway must fail only its own request.
        events = [
            Event(
                source="webhook",
                channel="sales",
                dedup_key=f"webhook:sales:poison-{i}",
                payload={"order": {"id": "bad\x00id" if i == 7 else f"P-{i}"}},
            )
            for i in range(20)
        ]
        outcomes = await asyncio.gather(
            *(batcher.submit(e) for e in events), return_exceptions=True
        )
        assert isinstance(outcomes[7], asyncpg.DataError)
        assert all(isinstance(o, Accepted) for i, o in enumerate(outcomes) if i != 7)
        assert await server.count("events") == 19
        # They did share a commit: the failed batch was retried event by event.
        assert any("a webhook batch of" in r.getMessage() for r in caplog.records)


# -- the example ----------------------------------------------------------------------


async def test_the_sales_hook_example_with_the_dev_secret_and_banner(
    db_url: str, db: Database, examples_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Empty counts as unset; monkeypatch restores the variable whatever dev_banner does.
    monkeypatch.setenv("ORCHESTRATOR_WEBHOOK_SECRET_SALES", "")
    loaded = load_path(examples_dir / "sales_hook.yaml", base=builtin_registry())
    assert loaded.ok, loaded.errors
    spec = loaded.workflows["sales_hook"]
    banner = dev_banner()
    secret = os.environ["ORCHESTRATOR_WEBHOOK_SECRET_SALES"]
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    assert banner[1] == (
        f"  ORCHESTRATOR_WEBHOOK_SECRET_SALES={secret} orchestrator hook-send sales "
        f"'{SALES_EXAMPLE}'"
    )
    again = dev_banner()  # a secret is set now: kept, and not shown
    assert os.environ["ORCHESTRATOR_WEBHOOK_SECRET_SALES"] == secret
    assert secret not in "\n".join(again)
    async for server in start(db_url, db, [spec]):
        sale = SALES_EXAMPLE.encode()
        status, _, answer = await server.post("sales", sale, signed(sale, secret=secret))
        assert status == 202, answer
        run = await server.run(answer["run_ids"][0])
        assert run["workflow"] == "sales_hook"
        assert run["params"] == {
            "sale_id": "S-1",
            "region": "emea",
            "amount": 129.5,
            "delivery": "msg_1",
        }
        refund = orjson.dumps({"type": "sale.refunded", "sale": {"id": "S-1"}})
        headers = signed(refund, secret=secret, msg_id="msg_2")
        status, _, answer = await server.post("sales", refund, headers)
        assert status == 202 and answer["run_ids"] == []  # stored, filtered out
        assert await server.count("events") == 2 and await server.count("runs") == 1
