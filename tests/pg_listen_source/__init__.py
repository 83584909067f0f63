"""A third-party event source that lives outside both packages: a PostgreSQL
``LISTEN`` channel. Installed by entry point it would be::

    [project.entry-points."orchestrator.sources"]
    pg_listen = "pg_listen_source:plugin"

A workflow starts on ``NOTIFY channel, '{"id": "...", ...}'`` with::

    triggers:
      - source: pg_listen
        channel: orders
        params: {n: "{{ payload.n }}"}

The payload's ``id`` is the dedup key: the same notification sent twice starts
one run. The ``pg_listen.wait`` sensor waits for a notification whose
``correlation`` equals ``equals``; ``orchestrator pg-notify CHANNEL JSON``
sends one. Everything here reaches the core through public modules only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import asyncpg
import click
import orjson
from pydantic import Field

from orchestrator.cli_support import cli_settings, fail, run_async
from orchestrator.context import TaskContext
from orchestrator.deferral import Defer, correlation_key
from orchestrator.intake import DeadLetter, Event, Router
from orchestrator.plugins import SensorKeys, SourcePlugin
from orchestrator.registry import HandlerRegistry
from orchestrator.settings import Settings
from orchestrator.sources import Source, SourceContext, loop_stopped
from orchestrator.store.queries import named_queries
from orchestrator.trigger_spec import Trigger

log = logging.getLogger(__name__)

SOURCE = "pg_listen"
SENSOR = "pg_listen.wait"


def sql(name: str) -> str:
    return named_queries(__name__)[name]


class PgListenTrigger(Trigger):
    """A JSON notification on a PostgreSQL channel."""

    source: Literal["pg_listen"] = "pg_listen"
    channel: str = Field(pattern=r"^[a-z_][a-z0-9_]*$", max_length=63)

    def routed_channel(self) -> str:
        return self.channel


def _event(channel: str, raw: str) -> Event | DeadLetter:
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return DeadLetter(SOURCE, channel, f"{SOURCE}:{channel}:?", f"not JSON: {exc}", raw)
    if not isinstance(payload, dict) or not isinstance(payload.get("id"), str):
        return DeadLetter(SOURCE, channel, f"{SOURCE}:{channel}:?", "no string 'id'", raw)
    return Event(SOURCE, channel, f"{SOURCE}:{channel}:{payload['id']}", payload, actor=SOURCE)


class PgListenSource:
    """LISTENs on every channel a trigger or a waiting sensor names."""

    name = SOURCE

    def __init__(self, url: str) -> None:
        self._url = url
        self._ctx: SourceContext | None = None
        self._channels: set[str] = set()
        self.listening: set[str] = set()
        self._conn: asyncpg.Connection | None = None
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    def setup(self, ctx: SourceContext) -> None:
        self._ctx = ctx

    def use_router(self, router: Router) -> None:
        self._channels = set(router.channels(SOURCE))
        self._changed.set()

    async def start(self) -> None:
        self._conn = await asyncpg.connect(self._url)
        self._task = asyncio.create_task(self._run(), name="pg-listen-source")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None:
            await self._conn.close()

    async def not_ready(self) -> str | None:
        return loop_stopped(self._task, "the LISTEN loop")

    def _notified(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        self._queue.put_nowait((channel, payload))

    async def _follow(self) -> None:
        assert self._conn is not None
        for channel in sorted(self._channels - self.listening):
            await self._conn.add_listener(channel, self._notified)
            self.listening.add(channel)
        for channel in sorted(self.listening - self._channels):
            await self._conn.remove_listener(channel, self._notified)
            self.listening.discard(channel)

    async def _run(self) -> None:
        while True:
            self._changed.clear()
            await self._follow()
            changed = asyncio.create_task(self._changed.wait())
            got = asyncio.create_task(self._queue.get())
            await asyncio.wait({changed, got}, return_when=asyncio.FIRST_COMPLETED)
            changed.cancel()
            if not got.done():
                got.cancel()
                continue
            batch = [got.result()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._ingest(batch)

    async def _ingest(self, batch: Sequence[tuple[str, str]]) -> None:
        assert self._ctx is not None
        found = [_event(channel, raw) for channel, raw in batch]
        events = [e for e in found if isinstance(e, Event)]
        letters = [e for e in found if isinstance(e, DeadLetter)]
        async with self._ctx.engine.db.transaction() as conn:
            accepted = await self._ctx.intake.ingest_in(
                conn, events, dead_letters=letters, actor=SOURCE
            )
            await conn.execute(
                sql("pg_listen_count"),
                [e.channel for e in events],
                [a.event_id for a in accepted],
            )


async def wait(
    ctx: TaskContext, *, channel: str, correlation: str, equals: Any, timeout_s: float = 600
) -> None:
    """Wait for a notification on ``channel`` whose ``correlation`` equals ``equals``."""
    raise Defer(
        SOURCE,
        f"a notification on {channel} with {correlation} = {equals!r}",
        match_key=correlation_key(SOURCE, channel, correlation, equals),
        timeout_s=timeout_s,
    )


def handlers() -> HandlerRegistry:
    registry = HandlerRegistry()
    registry.register(SENSOR, wait)
    return registry


def _waits_on(inputs: Mapping[str, Any]) -> tuple[str, str] | None:
    channel, correlation = inputs.get("channel"), inputs.get("correlation")
    if isinstance(channel, str) and isinstance(correlation, str):
        return channel, correlation
    return None


@click.command("pg-notify")
@click.argument("channel")
@click.argument("payload")
def pg_notify(channel: str, payload: str) -> None:
    """NOTIFY CHANNEL with the JSON PAYLOAD."""
    settings = cli_settings()
    if settings.database_url is None:
        fail("ORCHESTRATOR_DATABASE_URL is not set")
    url = settings.database_url.get_secret_value()
    try:
        json.loads(payload)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="PAYLOAD") from None

    async def send() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("SELECT pg_notify($1, $2)", channel, payload)
        finally:
            await conn.close()

    run_async(send)
    click.echo(f"notified {channel}")


class PgListenPlugin(SourcePlugin):
    triggers = (PgListenTrigger,)
    sensors = (SensorKeys(SENSOR, SOURCE, waits_on=_waits_on),)
    store = __name__

    def create(self, settings: Settings) -> Source | None:
        if settings.database_url is None:
            return None
        return PgListenSource(settings.database_url.get_secret_value())

    def commands(self) -> Sequence[click.Command]:
        return (pg_notify,)


plugin = PgListenPlugin()
