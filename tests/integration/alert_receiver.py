"""A local webhook receiver for alert tests: it accepts only alerts signed
with Standard Webhooks under the secret the ``receiver`` fixture sets."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from orchestrator.clock import SYSTEM_CLOCK
from orchestrator.signatures import standard_keys, verify_standard

SECRET_REF = "{{ secrets.ALERT_KEY }}"
"""The secret reference routes name; the fixture sets ``ORCHESTRATOR_SECRET_ALERT_KEY``."""


class Receiver:
    """A local aiohttp server that accepts only correctly signed alerts."""

    def __init__(self, secret: str, now: Callable[[], datetime] = SYSTEM_CLOCK.now) -> None:
        self.keys = standard_keys(secret)
        self.now = now
        self.down = False
        """Answer 503 (as a receiver that is down would)."""
        self.hold: asyncio.Event | None = None
        """Keep requests waiting until set."""
        self.tried: list[str] = []
        """The webhook-id of every request that came."""
        self.got: list[tuple[str, str, dict[str, Any]]] = []
        """(path, webhook-id, body) of every accepted alert."""
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        problem = verify_standard(
            self.keys,
            msg_id=request.headers.get("webhook-id"),
            timestamp=request.headers.get("webhook-timestamp"),
            signature=request.headers.get("webhook-signature"),
            body=body,
            now=self.now().timestamp(),
        )
        if problem is not None:
            return web.Response(status=401, text=problem)
        msg_id = request.headers["webhook-id"]
        self.tried.append(msg_id)
        if self.hold is not None:
            await self.hold.wait()
        if self.down:
            return web.Response(status=503)
        self.got.append((request.path, msg_id, orjson.loads(body)))
        return web.Response(status=204)

    def route(self, path: str = "/alerts", **extra: Any) -> dict[str, Any]:
        return {"type": "webhook", "url": self.url + path, "secret": SECRET_REF, **extra}
