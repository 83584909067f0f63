"""Handlers and event sources are found through entry points, never imported
by name: the engine core stays free of concrete sources, and another package
can add its own by declaring entry points in the groups below.

- ``orchestrator.handlers``: a callable returning a :class:`HandlerRegistry`.
- ``orchestrator.sources``: an object with ``create(settings) -> Source | None``
  (None when this process's roles do not include it) and, optionally,
  ``async prepare_dev(settings) -> DevPreparation`` for ``orchestrator dev``
  (start an embedded broker, generate a local secret, ...).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from orchestrator.registry import HandlerRegistry
from orchestrator.settings import Settings
from orchestrator.sources import Source

log = logging.getLogger(__name__)

HANDLERS_GROUP = "orchestrator.handlers"
SOURCES_GROUP = "orchestrator.sources"


@dataclass
class DevPreparation:
    """What a source needs changed for a zero-setup local run."""

    settings: dict[str, Any] = field(default_factory=dict)
    """Settings to override (e.g. the embedded broker's bootstrap address)."""
    banner: list[str] = field(default_factory=list)
    """Lines telling the user how to send this source an event."""
    cleanup: Callable[[], Awaitable[None]] | None = None


def handler_registry() -> HandlerRegistry:
    registry = HandlerRegistry()
    for ep in sorted(entry_points(group=HANDLERS_GROUP), key=lambda e: e.name):
        registry = registry.merged(ep.load()())
    return registry


def source_plugins() -> list[tuple[str, Any]]:
    return [
        (ep.name, ep.load())
        for ep in sorted(entry_points(group=SOURCES_GROUP), key=lambda e: e.name)
    ]


def create_sources(settings: Settings) -> list[Source]:
    sources = []
    for name, plugin in source_plugins():
        source = plugin.create(settings)
        if source is not None:
            log.debug("event source %s enabled", name)
            sources.append(source)
    return sources


async def prepare_dev(settings: Settings) -> tuple[Settings, list[DevPreparation]]:
    """Let every source set itself up for ``orchestrator dev``."""
    done: list[DevPreparation] = []
    try:
        for _name, plugin in source_plugins():
            prepare = getattr(plugin, "prepare_dev", None)
            if prepare is None:
                continue
            prep: DevPreparation | None = await prepare(settings)
            if prep is not None:
                done.append(prep)
                if prep.settings:
                    settings = settings.model_copy(update=prep.settings)
    except BaseException:
        # The caller never sees these: stop what was started (an embedded broker).
        for prep in reversed(done):
            if prep.cleanup is not None:
                try:
                    await prep.cleanup()
                except Exception:
                    log.exception("a dev-mode service did not stop cleanly")
        raise
    return settings, done
