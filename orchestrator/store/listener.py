"""LISTEN on a dedicated connection that reconnects by itself.

NOTIFY only wakes: callers always re-read the database, and poll on a timer
as the safety net, so a notification lost during a reconnect costs latency,
never correctness.

Reconnecting waits on real time by default (the server comes back in real
time, and a test holding a manual clock still must not lose its wake-ups).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import asyncpg

from orchestrator.backoff import Backoff
from orchestrator.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)


class Listener:
    def __init__(
        self,
        url: str,
        channels: dict[str, Callable[[str], None]],
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._url = url
        self._clock = clock
        self._channels = channels
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="orchestrator-listener")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        backoff = Backoff(0.1, 5.0)
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self._url)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                for channel, callback in self._channels.items():
                    await conn.add_listener(channel, self._dispatch(callback))
                self.connected.set()
                backoff.reset()
                # Everything may have changed while we were not listening.
                for callback in self._channels.values():
                    callback("")
                await lost.wait()
                delay = backoff.next()
                log.warning("LISTEN connection lost; reconnecting in %.1fs", delay)
            except asyncio.CancelledError:
                raise
            except (OSError, asyncpg.PostgresError) as exc:
                delay = backoff.next()
                log.warning("LISTEN connection failed (%s); retrying in %.1fs", exc, delay)
            finally:
                self.connected.clear()
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await asyncio.shield(conn.close(timeout=2))
            await self._clock.sleep(delay)

    @staticmethod
    def _dispatch(
        callback: Callable[[str], None],
    ) -> Callable[[asyncpg.Connection, int, str, str], None]:
        def on_notify(_conn: asyncpg.Connection, _pid: int, _channel: str, payload: str) -> None:
            callback(payload)

        return on_notify
