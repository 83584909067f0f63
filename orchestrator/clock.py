"""Time as a dependency: every part that reads the time or waits for it takes
a clock, so tests can move time instead of waiting for it.

This is the one module that reads real time (a test greps the tree for
any other). Schedules, time sensors, poll sensors, quiet windows of the
landing zone, heartbeats, leases and reaper passes, and every backoff between
retries run on the injected clock; the orchestrator hands its clock to all of
them and handlers find it as ``ctx.clock``. Leases are stamped in the
database: on the :class:`SystemClock` by the database's own clock (one clock
for every replica), on a :class:`ManualClock` by the test's time.

What stays on real time, on purpose, through the named helpers at the end:
``asyncio.timeout`` around handlers (a handler is real work), and pacing that
must go on while a test holds a :class:`ManualClock` still (the worker's
flush window and the webhook batching window), polls of child processes and
brokers, and the deadlines of test helpers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware (UTC)."""
        ...

    def sleep(self, seconds: float) -> Awaitable[None]:
        """Wait ``seconds``, counted from the call (not from the first await)."""
        ...

    def stamp(self) -> datetime | None:
        """The time to stamp leases with in the database, or None to let the
        database use its own clock (one clock for every replica)."""
        ...


class SystemClock:
    """Real time."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def stamp(self) -> None:
        return None

    def sleep(self, seconds: float) -> Awaitable[None]:
        return asyncio.sleep(seconds)


class ManualClock:
    """A clock that moves only when told to; ``sleep`` returns once time has
    been advanced past the sleeper's deadline.

    Waking is exact: when :meth:`advance` returns, every sleeper it made due
    has been released (and no longer counts in :attr:`sleepers`), so a test
    can step a loop one sleep at a time with :meth:`wait_for_sleepers`.
    """

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("ManualClock needs a timezone-aware start")
        self._now = start
        self._waiting: list[tuple[datetime, asyncio.Future[None]]] = []
        self._arrived = asyncio.Event()

    def now(self) -> datetime:
        return self._now

    def stamp(self) -> datetime:
        """Leases too run on this clock: a test moves them past their end."""
        return self._now

    async def advance(self, delta: timedelta | float) -> None:
        step = delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
        await self.set(self._now + step)

    async def set(self, when: datetime) -> None:
        self._now = when
        still = []
        for deadline, waiter in self._waiting:
            if deadline <= when:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                still.append((deadline, waiter))
        self._waiting = still

    @property
    def sleepers(self) -> int:
        """How many ``sleep`` calls are waiting for time to move."""
        return sum(1 for _deadline, waiter in self._waiting if not waiter.done())

    async def wait_for_sleepers(self, count: int = 1) -> None:
        """Return once at least ``count`` sleepers wait (bound it with a timeout)."""
        while self.sleepers < count:
            self._arrived.clear()
            await self._arrived.wait()

    def sleep(self, seconds: float) -> Awaitable[None]:
        # The deadline is taken now, at the call: a sleep handed to a task that
        # starts only after the test moved the clock must not count from then.
        deadline = self._now + timedelta(seconds=seconds)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if deadline <= self._now:
            waiter.set_result(None)
            return waiter
        entry = (deadline, waiter)
        self._waiting.append(entry)
        self._arrived.set()

        def forget(_done: asyncio.Future[None]) -> None:  # woken or cancelled
            if entry in self._waiting:
                self._waiting.remove(entry)

        waiter.add_done_callback(forget)
        return waiter


#: The clock of a process that was not given one.
SYSTEM_CLOCK = SystemClock()


async def wait_for_event(clock: Clock, event: asyncio.Event, seconds: float | None) -> bool:
    """Wait until ``event`` is set or ``seconds`` have passed on ``clock``
    (None: no time limit). True when the event was set."""
    if event.is_set():
        return True
    if seconds is None:
        await event.wait()
        return True
    if seconds <= 0:
        return False
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    woken = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({sleeper, woken}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in (sleeper, woken):
            waiter.cancel()
        await asyncio.gather(sleeper, woken, return_exceptions=True)
    return event.is_set()


# -- real time, where nothing else will do ------------------------------------------
# Pacing that must go on while a test holds a ManualClock still (the worker's
# flush window and the webhook batching window let concurrent work share one
# commit), polls of things that answer in real time (child processes, a
# broker, the embedded PostgreSQL) and the deadlines of test helpers. The
# names say which; nothing else in the project reads or waits for real time.


async def real_pause(seconds: float) -> None:
    """Let the event loop run for ``seconds`` of real time."""
    await asyncio.sleep(seconds)


def real_block(seconds: float) -> None:
    """Block the thread for ``seconds`` (only where no event loop runs)."""
    time.sleep(seconds)


def monotonic() -> float:
    """Seconds on a clock that never goes back, for real-time deadlines."""
    return time.monotonic()
