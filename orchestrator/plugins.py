"""Handlers and event sources are found through entry points, never imported
by name: the engine core stays free of concrete sources, and another package
can add its own by declaring entry points in the groups below.

- ``orchestrator.handlers``: a callable returning a :class:`HandlerRegistry`.
- ``orchestrator.sources``: a :class:`SourcePlugin`. It contributes its trigger
  models (``source: NAME`` in a workflow's ``triggers``), what its sensors wait
  on (so intake computes the keys of its events), its SQL and migrations (a
  package holding ``sql/`` and ``migrations/``), its CLI commands, the
  :class:`~orchestrator.sources.Source` this process runs, and how
  ``orchestrator dev`` sets it up.

Tests and embedding programs add a plugin without installing a package with
``source_registry().added(name, plugin)``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Field, TypeAdapter
from pydantic_core import PydanticCustomError

from orchestrator.registry import HandlerRegistry
from orchestrator.settings import Settings
from orchestrator.trigger_spec import Trigger

if TYPE_CHECKING:
    import click
    from aiohttp import web

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


@dataclass(frozen=True)
class SensorKeys:
    """What a sensor handler waits on, so intake computes the correlation keys
    of arriving events without knowing the handler."""

    handler: str
    source: str
    """The events that can end its waits."""
    waits_on: Callable[[Mapping[str, Any]], tuple[str, str] | None] | None = None
    """From a task's inputs: (channel, JMESPath correlation expression), or
    None when they are not literal. Intake then records
    :func:`~orchestrator.deferral.correlation_key` of each event on that
    channel, which the sensor's wait names as its ``match_key``."""
    keyed_by_channel: bool = False
    """Every event of ``source`` is also keyed by its channel
    (:func:`~orchestrator.deferral.channel_key`): a wait on one exact channel
    (a file's path) names that key."""
    by_pattern: bool = False
    """Its waits may hold a ``match_pattern`` (a regex) that each event of
    ``source`` is matched against by channel."""


class SourcePlugin:
    """What an ``orchestrator.sources`` entry point names. Each part is
    optional: the defaults contribute nothing."""

    triggers: Sequence[type[Trigger]] = ()
    """Trigger models, each with ``source: Literal["name"]``."""
    sensors: Sequence[SensorKeys] = ()
    looked_up_first: Collection[str] = ()
    """Event sources whose events come a few at a time (a schedule): their
    dedup keys are looked up before run ids are drawn, so a repeated one uses
    up no run id."""
    store: str | None = None
    """An importable package with ``sql/*.sql`` (named queries) and
    ``migrations/NNNN_name.sql``, applied after the core's."""

    def create(self, settings: Settings) -> Source | None:
        """The source this process runs, or None when its roles leave it out."""
        return None

    async def prepare_dev(self, settings: Settings) -> DevPreparation | None:
        """Set up for ``orchestrator dev`` (an embedded broker, a secret, ...)."""
        return None

    def commands(self) -> Sequence[click.Command]:
        """CLI commands added to ``orchestrator`` (e.g. ``publish``)."""
        return ()

    def add_routes(self, app: web.Application) -> None:
        """Add this source's HTTP API routes (under ``/api/v1``) to ``app``."""


def _tag_of(model: type[Trigger]) -> str:
    default = model.model_fields["source"].default
    if not isinstance(default, str):
        raise TypeError(f"trigger model {model.__name__} needs a default 'source' name")
    return default


class SourceRegistry:
    """The installed source plugins and what they contribute, by name."""

    def __init__(self, plugins: Iterable[tuple[str, SourcePlugin]] = ()) -> None:
        self._plugins = dict(plugins)

    @property
    def plugins(self) -> list[tuple[str, SourcePlugin]]:
        return list(self._plugins.items())

    def add(self, name: str, plugin: SourcePlugin) -> None:
        if name in self._plugins:
            raise ValueError(f"an event source plugin named {name!r} is already installed")
        self._plugins[name] = plugin
        self._forget()

    def remove(self, name: str) -> None:
        del self._plugins[name]
        self._forget()

    @contextmanager
    def added(self, name: str, plugin: SourcePlugin) -> Iterator[None]:
        """``plugin`` installed as if by entry point, for the ``with`` block."""
        self.add(name, plugin)
        try:
            yield
        finally:
            self.remove(name)

    def _forget(self) -> None:
        for derived in ("trigger_models", "_adapter", "sensors", "looked_up_first"):
            self.__dict__.pop(derived, None)

    @cached_property
    def trigger_models(self) -> dict[str, type[Trigger]]:
        models: dict[str, type[Trigger]] = {}
        for name, plugin in self._plugins.items():
            for model in plugin.triggers:
                tag = _tag_of(model)
                if tag in models and models[tag] is not model:
                    raise ValueError(f"two trigger models for source {tag!r} (plugin {name!r})")
                models[tag] = model
        return models

    @cached_property
    def _adapter(self) -> TypeAdapter[Trigger] | None:
        models = tuple(self.trigger_models.values())
        if not models:
            return None
        if len(models) == 1:
            return TypeAdapter(models[0])
        union = Annotated[Union[models], Field(discriminator="source")]  # type: ignore[valid-type]  # noqa: UP007
        return TypeAdapter(union)

    def validate_trigger(self, value: Any) -> Trigger:
        if self._adapter is None:
            raise PydanticCustomError("no_sources", "no event source plugins are installed")
        return self._adapter.validate_python(value)

    @cached_property
    def sensors(self) -> dict[str, SensorKeys]:
        """By handler name."""
        return {s.handler: s for _name, p in self._plugins.items() for s in p.sensors}

    @cached_property
    def looked_up_first(self) -> frozenset[str]:
        return frozenset(s for _name, p in self._plugins.items() for s in p.looked_up_first)

    def stores(self) -> list[str]:
        """Packages with SQL and migrations, each once, in plugin order."""
        return list(dict.fromkeys(p.store for _n, p in self._plugins.items() if p.store))

    def add_routes(self, app: web.Application) -> None:
        """Every plugin's HTTP API routes."""
        for _name, plugin in self._plugins.items():
            plugin.add_routes(app)

    def commands(self) -> dict[str, click.Command]:
        found: dict[str, click.Command] = {}
        for name, plugin in self._plugins.items():
            for command in plugin.commands():
                if command.name is None or command.name in found:
                    raise ValueError(f"plugin {name!r}: command {command.name!r} is taken")
                found[command.name] = command
        return found


_registry: SourceRegistry | None = None


def source_registry() -> SourceRegistry:
    """The process's source plugins: those installed by entry point, the
    built-in ``dataset`` source, plus any added in-process."""
    global _registry
    if _registry is None:
        from orchestrator.dataset_triggers import PLUGIN  # imports this module

        installed = [
            (ep.name, ep.load())
            for ep in sorted(entry_points(group=SOURCES_GROUP), key=lambda e: e.name)
        ]
        if not any(name == "dataset" for name, _ in installed):
            installed.append(("dataset", PLUGIN))
        _registry = SourceRegistry(installed)
    return _registry


def handler_registry() -> HandlerRegistry:
    registry = HandlerRegistry()
    for ep in sorted(entry_points(group=HANDLERS_GROUP), key=lambda e: e.name):
        registry = registry.merged(ep.load()())
    return registry


def source_plugins() -> list[tuple[str, SourcePlugin]]:
    return source_registry().plugins


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
            prep = await plugin.prepare_dev(settings)
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
