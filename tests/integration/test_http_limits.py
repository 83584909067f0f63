"""Slow and greedy clients over raw sockets: the server bounds how long a
request may take to arrive and how many connections it serves at once, and
keeps serving everyone else."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import aiohttp
import pytest
from eventually import eventually

from handlers import builtin_registry
from orchestrator.app import Orchestrator
from orchestrator.clock import SYSTEM_CLOCK, monotonic
from orchestrator.settings import Settings
from orchestrator.signatures import standard_headers
from orchestrator.spec import TaskSpec, WorkflowSpec
from sources.models import WebhookTrigger
from sources.webhook import WebhookSource

SECRET = "whsec_" + "c2xvdy1jbGllbnRzLXRlc3Qta2V5LTAxMjM0NTY3"
READ_TIMEOUT_S = 0.5
#: Far beyond the read timeout: a client still held then was never cut off.
DEADLINE_S = 15.0
FLOW = WorkflowSpec(
    name="orders",
    tasks=(TaskSpec(id="t", handler="noop"),),
    triggers=(WebhookTrigger(hook="orders"),),
)


@dataclass
class Outcome:
    how: str
    """The status the server answered with (``"408"``), ``"closed"``, or ``"held"``."""
    seconds: float


async def trickle(port: int, head: bytes, *, drip: bytes = b"x") -> Outcome:
    """Send ``head``, then ``drip`` a byte at a time, until the server answers
    or closes the connection, or until :data:`DEADLINE_S`."""
    started = monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        while monotonic() - started < DEADLINE_S:
            try:
                # Waiting for an answer also paces the drip.
                data = await asyncio.wait_for(reader.read(4096), timeout=0.1)
            except TimeoutError:
                writer.write(drip)
                await writer.drain()
                continue
            how = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/1.1 ") else "closed"
            return Outcome(how, monotonic() - started)
        return Outcome("held", monotonic() - started)
    except ConnectionError:
        return Outcome("closed", monotonic() - started)
    finally:
        writer.close()


def slow_body_head(path: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000\r\n\r\n{"
    ).encode()


SLOW_HEAD = b"POST /hooks/orders HTTP/1.1\r\nHost: test\r\nX-Slow: "


@asynccontextmanager
async def server(db_url: str, **overrides: Any) -> AsyncIterator[tuple[Orchestrator, int]]:
    settings = Settings(
        **{
            "http_port": 0,
            "worker_slots": 0,
            "http_read_timeout_s": READ_TIMEOUT_S,
            **overrides,
        }
    )
    async with Orchestrator(
        settings,
        db_url,
        registry=builtin_registry(),
        workflows=[FLOW],
        sources=[WebhookSource()],
        http=True,
    ) as orch:
        assert orch.http is not None
        yield orch, orch.http.port


async def deliver(port: int, n: int) -> int:
    """A normal, signed webhook delivery on a fresh connection; its status."""
    body = b'{"order": %d}' % n
    headers = standard_headers(SECRET, f"msg_{n}", int(SYSTEM_CLOCK.now().timestamp()), body)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{port}/hooks/orders",
            data=body,
            headers={**headers, "Content-Type": "application/json"},
        ) as resp,
    ):
        return resp.status


@pytest.fixture(autouse=True)
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRATOR_WEBHOOK_SECRET_ORDERS", SECRET)


async def open_connections(orch: Orchestrator) -> int:
    assert orch.http is not None and orch.http.connections is not None
    return orch.http.connections.open


@pytest.mark.parametrize("path", ["/hooks/orders", "/api/v1/workflows/orders/runs"])
async def test_a_trickling_body_gets_408_while_others_are_served(db_url: str, path: str) -> None:
    async with server(db_url) as (orch, port):
        slow = asyncio.create_task(trickle(port, slow_body_head(path)))
        await eventually(lambda: open_connections(orch), what="the slow client connected")
        assert await deliver(port, 1) == 202  # served while the slow body trickles
        outcome = await slow
        assert outcome.how in ("408", "closed"), outcome
        assert READ_TIMEOUT_S <= outcome.seconds < DEADLINE_S, outcome
        assert await deliver(port, 2) == 202


async def test_a_trickling_request_head_is_cut_off(db_url: str) -> None:
    async with server(db_url) as (orch, port):
        slow = asyncio.create_task(trickle(port, SLOW_HEAD, drip=b"a"))
        await eventually(lambda: open_connections(orch), what="the slow client connected")
        assert await deliver(port, 1) == 202
        outcome = await slow
        assert outcome.how in ("408", "closed"), outcome
        assert outcome.seconds < DEADLINE_S, outcome


async def test_connections_over_the_limit_are_refused_and_serving_resumes(db_url: str) -> None:
    limit = 3
    async with server(db_url, http_max_connections=limit) as (orch, port):
        slow: list[asyncio.Task[Outcome]] = []
        for n in range(1, limit + 1):
            slow.append(asyncio.create_task(trickle(port, slow_body_head("/hooks/orders"))))
            await eventually(partial(_at_least, orch, n), what=f"{n} slow connections")
        # One more, slow or not, is turned away at once rather than held.
        refused = await trickle(port, slow_body_head("/hooks/orders"))
        assert refused.how in ("503", "closed"), refused
        assert orch.http is not None and orch.http.connections is not None
        assert orch.http.connections.refused == 1
        outcomes = await asyncio.gather(*slow)
        assert all(o.how in ("408", "closed") for o in outcomes), outcomes
        # The slow ones are gone: everyone is served again.
        await eventually(lambda: _below(orch, limit), what="slow connections released")
        assert await deliver(port, 1) == 202
        assert [await deliver(port, n) for n in range(2, 2 + limit + 1)] == [202] * (limit + 1)


async def _at_least(orch: Orchestrator, n: int) -> bool:
    return await open_connections(orch) >= n


async def _below(orch: Orchestrator, n: int) -> bool:
    return await open_connections(orch) < n
