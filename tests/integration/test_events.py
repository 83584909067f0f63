"""Intake events over the HTTP API and the CLI: each event's status (started,
buffered or dropped by a paused workflow, dead-lettered, recorded), its runs,
redeliveries, masked credential headers, filters, and cursor pages that do
not shift when events arrive meanwhile."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from cli_process import cli_runner
from pydantic import TypeAdapter

from orchestrator.api_events import EventDetail, EventSummary
from orchestrator.app import Orchestrator
from orchestrator.intake import Event
from orchestrator.pausing import pause_workflow
from orchestrator.settings import Settings
from orchestrator.spec import OnPause, TaskSpec, WorkflowSpec
from sources.models import WebhookTrigger

pytestmark = pytest.mark.timeout(120)


def _spec(name: str, **kw: Any) -> WorkflowSpec:
    return WorkflowSpec(
        name=name,
        tasks=(TaskSpec(id="t", handler="noop"),),
        triggers=(WebhookTrigger(hook="orders", auth="none", params={"n": "{{ payload.n }}"}),),
        **kw,
    )


ORDERS = _spec("orders")
STRICT = _spec("strict", params={"n": {"type": "integer"}})
DROPPER = _spec("dropper", on_pause=OnPause.DROP)
KEEPER = _spec("keeper", on_pause=OnPause.BUFFER)
CREDENTIALS = {
    "Authorization": "Bearer s3cret",
    "X-Hub-Signature-256": "sha256=abc",
    "Cookie": "session=s3cret",
    "X-Request-Id": "r-1",
}


def _event(key: str, n: Any, **kw: Any) -> Event:
    return Event(source="webhook", channel="orders", dedup_key=key, payload={"n": n}, **kw)


async def test_events_list_status_runs_masking_and_pages(db_url: str) -> None:
    settings = Settings(worker_slots=0, http_port=0, poll_interval_s=0.2)
    workflows = [ORDERS, STRICT, DROPPER, KEEPER]
    async with Orchestrator(settings, db_url, workflows=workflows, http=True) as orch:
        assert orch.http is not None and orch.engine is not None and orch.intake is not None
        origin = f"http://127.0.0.1:{orch.http.port}"
        base = origin + "/api/v1"
        intake = orch.intake
        # Strict refuses a text n (a dead letter); the others start runs.
        [refused] = await intake.ingest([_event("d-1", "seven", headers=CREDENTIALS)])
        await pause_workflow(orch.engine, "dropper", actor="test", reason="maintenance")
        await pause_workflow(orch.engine, "keeper", actor="test")
        [held] = await intake.ingest([_event("d-2", 2)])
        [again] = await intake.ingest([_event("d-2", 2)])  # a redelivery: starts nothing
        assert again.duplicate and again.event_id == held.event_id
        [quiet] = await intake.ingest(
            [Event(source="kafka", channel="nobody-listens", dedup_key="k-1", payload=[1])]
        )
        async with aiohttp.ClientSession() as http:

            async def get(path: str) -> tuple[int, Any]:
                url = origin + path if path.startswith("/api/") else base + path
                async with http.get(url) as resp:
                    return resp.status, await resp.json(content_type=None)

            status, page = await get("/events")
            assert status == 200 and page["next"] is None
            items = TypeAdapter(list[EventSummary]).validate_python(page["items"])
            by_id = {e.id: e for e in items}
            assert [e.id for e in items] == sorted(by_id, reverse=True)
            first = by_id[refused.event_id]
            assert first.status == "dead_lettered" and "strict" in (first.reason or "")
            assert sorted(first.run_ids) == sorted(refused.run_ids) and len(first.run_ids) == 3
            [letter] = first.dead_letters
            assert letter.workflow == "strict" and not letter.redriven
            second = by_id[held.event_id]
            assert second.status == "dropped" and "paused" in (second.reason or "")
            assert {(h.workflow, h.state) for h in second.held} == {
                ("dropper", "dropped"),
                ("keeper", "buffered"),
            }
            assert second.redeliveries == 1 and second.last_redelivered_at is not None
            assert by_id[quiet.event_id].status == "recorded"
            assert by_id[quiet.event_id].run_ids == []

            # One event: its content, credentials masked.
            status, one = await get(f"/events/{refused.event_id}")
            detail = EventDetail.model_validate(one)
            assert status == 200 and detail.payload == {"n": "seven"}
            assert detail.headers == {
                "Authorization": "***",
                "X-Hub-Signature-256": "***",
                "Cookie": "***",
                "X-Request-Id": "r-1",
            }
            assert "s3cret" not in json.dumps(one)
            status, missing = await get("/events/999999")
            assert status == 404 and missing["errors"][0]["name"] == "id"

            # Filters.
            async def ids(query: str) -> list[int]:
                status, found = await get("/events?" + query)
                assert status == 200, found
                return [e["id"] for e in found["items"]]

            assert await ids("status=dropped") == [held.event_id]
            assert await ids("status=dead_lettered") == [refused.event_id]
            assert await ids("source=kafka") == [quiet.event_id]
            both = [held.event_id, refused.event_id]
            assert await ids("workflow=keeper") == both  # held one, started the other
            assert await ids("workflow=strict") == both  # refused one, started the other
            assert await ids("workflow=nobody") == []
            assert await ids("redelivered=true") == [held.event_id]
            assert await ids("since=2999-01-01T00:00:00Z") == []
            for query, name in (
                ("status=lost", "status"),
                ("limit=0", "limit"),
                ("since=yesterday", "since"),
                ("cursor=-1", "cursor"),
            ):
                status, bad = await get("/events?" + query)
                assert status == 400 and bad["errors"][0]["name"] == name, bad

            # Pages: the next link keeps the filters; events arriving meanwhile
            # come before the first page, never into the later ones.
            status, page = await get("/events?limit=2&source=webhook")
            assert [e["id"] for e in page["items"]] == [held.event_id, refused.event_id]
            assert page["next"] is None
            status, page = await get("/events?limit=1")
            seen = [e["id"] for e in page["items"]]
            [late] = await intake.ingest([_event("d-3", 3)])
            while page["next"] is not None:
                assert "limit=1" in page["next"]
                status, page = await get(page["next"])
                seen += [e["id"] for e in page["items"]]
            assert seen == [quiet.event_id, held.event_id, refused.event_id]

    # The CLI: the same items, as JSON.
    cli = cli_runner(db_url)
    out = cli("events", "--json")
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    assert set(listed) == {"items", "next"} and listed["next"] is None
    items = TypeAdapter(list[EventSummary]).validate_python(listed["items"])
    assert [e.status for e in items] == ["dropped", "recorded", "dropped", "dead_lettered"]
    out = cli("events", "--json", "--limit", "1", "--status", "dropped")
    paged = json.loads(out.stdout)
    assert [e["id"] for e in paged["items"]] == [late.event_id]
    assert paged["next"] == f"--before {late.event_id}"
    out = cli("events", "--json", "--status", "dropped", "--before", str(late.event_id))
    paged = json.loads(out.stdout)
    assert [e["id"] for e in paged["items"]] == [held.event_id]
    out = cli("events", "show", str(refused.event_id), "--json")
    shown = EventDetail.model_validate(json.loads(out.stdout))
    assert shown.headers["Authorization"] == "***" and shown.status == "dead_lettered"
    out = cli("events", "show", str(refused.event_id))
    assert out.returncode == 0 and "s3cret" not in out.stdout and "dead letter" in out.stdout
    out = cli("events", "--status", "dropped")
    assert out.returncode == 0 and "dropped" in out.stdout and "paused" in out.stdout
    out = cli("events", "show", "999999")
    assert out.returncode == 2 and "no event 999999" in out.stderr
