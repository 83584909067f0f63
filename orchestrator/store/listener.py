"""LISTEN for a whole process on one connection that reconnects by itself.

Every part of a process that wants waking (the worker's claim loop, the
triggerer, anything waiting for runs to end) subscribes to a channel of the
one :class:`Listener` its :class:`~orchestrator.store.Database` holds; the
channels are those of :mod:`orchestrator.notices`. The connection opens with
the first subscription and closes with the last.

NOTIFY only wakes: callers always re-read the database, and poll on a timer
as the safety net, so a notification lost during a reconnect costs latency,
never correctness. After every (re)connect each subscriber is called once
with an empty payload: everything may have changed while nobody listened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg

from orchestrator.backoff import Backoff
from orchestrator.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

Callback = Callable[[str], None]


class Subscription:
    """One subscriber's interest in one channel; :meth:`close` ends it."""

    def __init__(self, listener: Listener, channel: str, callback: Callback) -> None:
        self.listener = listener
        self.channel = channel
        self.callback = callback

    async def listening(self) -> None:
        """Return once the channel is listened to (notifications from then on arrive)."""
        await self.listener.listening(self.channel)

    async def close(self) -> None:
        await self.listener.unsubscribe(self)


class Listener:
    def __init__(self, url: str, *, clock: Clock = SYSTEM_CLOCK) -> None:
        # Reconnecting waits on real time by default: the server comes back in
        # real time, and a test holding a manual clock must not lose wake-ups.
        self._url = url
        self._clock = clock
        self._subscribers: dict[str, list[Subscription]] = {}
        self._listening: set[str] = set()
        self._changed = asyncio.Event()
        self._state = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    @property
    def channels(self) -> set[str]:
        """Channels listened to right now."""
        return set(self._listening)

    def subscribe(self, channel: str, callback: Callback) -> Subscription:
        subscription = Subscription(self, channel, callback)
        self._subscribers.setdefault(channel, []).append(subscription)
        self._changed.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="orchestrator-listener")
        return subscription

    async def unsubscribe(self, subscription: Subscription) -> None:
        subscribers = self._subscribers.get(subscription.channel, [])
        if subscription in subscribers:
            subscribers.remove(subscription)
        if not subscribers:
            self._subscribers.pop(subscription.channel, None)
        self._changed.set()
        if not self._subscribers:
            await self.close()

    async def listening(self, channel: str) -> None:
        async with self._state:
            await self._state.wait_for(lambda: channel in self._listening)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        backoff = Backoff(0.1, 5.0)
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self._url)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                backoff.reset()
                while not lost.is_set():
                    self._changed.clear()
                    await self._sync(conn)
                    await _first(lost.wait(), self._changed.wait())
                delay = backoff.next()
                log.warning("LISTEN connection lost; reconnecting in %.1fs", delay)
            except asyncio.CancelledError:
                raise
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                delay = backoff.next()
                log.warning("LISTEN connection failed (%s); retrying in %.1fs", exc, delay)
            finally:
                self._listening.clear()
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await asyncio.shield(conn.close(timeout=2))
            await self._clock.sleep(delay)

    async def _sync(self, conn: asyncpg.Connection) -> None:
        """LISTEN to the channels subscribed to, and to no others."""
        for channel in sorted(self._listening - set(self._subscribers)):
            await conn.remove_listener(channel, self._on_notify)
            self._listening.discard(channel)
        added = sorted(set(self._subscribers) - self._listening)
        for channel in added:
            await conn.add_listener(channel, self._on_notify)
            self._listening.add(channel)
        if added:
            async with self._state:
                self._state.notify_all()
            # Whatever was sent before now was missed: everyone re-checks.
            for channel in added:
                self._dispatch(channel, "")

    def _on_notify(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        self._dispatch(channel, payload)

    def _dispatch(self, channel: str, payload: str) -> None:
        for subscription in list(self._subscribers.get(channel, ())):
            try:
                subscription.callback(payload)
            except Exception:
                log.exception("subscriber of %s failed on a notification", channel)


async def _first(*waits: Coroutine[Any, Any, Any]) -> None:
    """Wait until the first of ``waits`` finishes; cancel the rest."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
