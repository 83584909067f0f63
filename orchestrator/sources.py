"""The contract between the engine and event sources.

Concrete sources live in ``sources/``; the engine only knows this protocol.
A source registers HTTP routes (if any) in :meth:`Source.setup`, runs in
:meth:`Source.start`/:meth:`Source.stop`, hands events to
``ctx.intake.ingest`` and acknowledges them only after it returns, and follows
workflow reloads through :meth:`Source.use_router`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from orchestrator.clock import Clock
from orchestrator.engine import Engine
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
