"""The contract between the engine and event sources.

Concrete sources live in ``sources/``; the engine only knows this protocol.
A source registers HTTP routes (if any) in :meth:`Source.setup`, runs in
:meth:`Source.start`/:meth:`Source.stop`, hands events to
``ctx.intake.ingest`` and acknowledges them only after it returns, and follows
workflow reloads through :meth:`Source.use_router`, and says through
:meth:`Source.not_ready` when it cannot take events (``/readyz``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from orchestrator.clock import Clock
from orchestrator.engine import Engine
from orchestrator.health import Liveness
from orchestrator.intake import Intake, Router
from orchestrator.settings import Settings


@dataclass
class SourceContext:
    settings: Settings
    engine: Engine
    intake: Intake
    clock: Clock
    http: web.Application | None
    """The API application to add routes to, or None when this process serves no HTTP."""
    liveness: Liveness | None = None
    """Where a source's long-running loop says it comes round (``/healthz``)."""


def loop_stopped(task: asyncio.Task[None] | None, what: str) -> str | None:
    """Why a source is not ready when its loop ``task`` ended while the
    source runs (it never should); None while it runs or before it starts."""
    if task is None or not task.done():
        return None
    failure = None if task.cancelled() else task.exception()
    return f"{what} stopped" + (f" ({type(failure).__name__}: {failure})" if failure else "")


class Source(Protocol):
    name: str

    def setup(self, ctx: SourceContext) -> None:
        """Called once, before the HTTP server starts."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def use_router(self, router: Router) -> None:
        """The loaded workflows changed: follow the new routes (topics, globs, ...)."""
        ...

    async def not_ready(self) -> str | None:
        """Why this source cannot take events now (``/readyz``); None when it can."""
        ...
