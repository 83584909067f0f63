"""Capped exponential backoff with jitter: the one formula for every wait that
grows after a failure.

The persisted retry policy (:mod:`orchestrator.retry`), poll sensors
(:mod:`orchestrator.polls`) and every reconnect or retry loop (the worker's and
the triggerer's restarts, the NOTIFY listener, the Kafka and landing-zone
sources) call :func:`capped_exponential`, directly or through :class:`Backoff`.
Randomness is injected (``rand``) so tests pin the jitter instead of sampling.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Awaitable, Callable

__all__ = ["Backoff", "capped_exponential"]


def capped_exponential(
    attempt: int,
    *,
    initial_s: float,
    max_s: float,
    factor: float = 2.0,
    jitter: float = 0.0,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait after failure number ``attempt`` (from 1):
    ``initial_s * factor ** (attempt - 1)``, at most ``max_s``, then spread by
    ``± jitter`` (a fraction: 0.1 is ±10 %), never below zero.

    Jitter spreads the retries of many clients that failed together (a shared
    dependency went down) so they do not all come back at the same instant.
    """
    if attempt < 1:
        raise ValueError(f"attempt starts at 1, got {attempt}")
    try:
        delay = min(initial_s * factor ** (attempt - 1), max_s)
    except OverflowError:  # factor**n beyond float range: the cap applies anyway
        delay = max_s if initial_s else 0.0
    if math.isnan(delay):  # 0 * inf with an uncapped (infinite) maximum
        delay = 0.0
    return max(0.0, delay * (1 + jitter * (2 * rand() - 1)))


class Backoff:
    """The delays of one retry loop: call :meth:`next` after each failure and
    :meth:`reset` after a success.

    >>> b = Backoff(0.1, 5.0, jitter=0.0)
    >>> [b.next() for _ in range(3)]
    [0.1, 0.2, 0.4]
    """

    __slots__ = ("factor", "failures", "initial_s", "jitter", "max_s", "rand")

    def __init__(
        self,
        initial_s: float,
        max_s: float,
        *,
        factor: float = 2.0,
        jitter: float = 0.1,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if initial_s < 0 or max_s < initial_s or factor < 1 or not 0 <= jitter <= 1:
            raise ValueError(
                "Backoff needs 0 <= initial_s <= max_s, factor >= 1 and 0 <= jitter <= 1"
            )
        self.initial_s = initial_s
        self.max_s = max_s
        self.factor = factor
        self.jitter = jitter
        self.rand = rand
        self.failures = 0
        """Failures since the last success."""

    def next(self) -> float:
        """Count one more failure; the seconds to wait before trying again."""
        self.failures += 1
        return capped_exponential(
            self.failures,
            initial_s=self.initial_s,
            max_s=self.max_s,
            factor=self.factor,
            jitter=self.jitter,
            rand=self.rand,
        )

    def reset(self) -> None:
        """The loop succeeded: the next failure waits ``initial_s`` again."""
        self.failures = 0


async def restart_on_failure(
    loop: Callable[[], Awaitable[None]],
    backoff: Backoff,
    sleep: Callable[[float], Awaitable[None]],
    what: str,
) -> None:
    """Run ``loop`` for good: when it fails (the database away, ...), log,
    back off and start it again. Nothing that matters may live only in it."""
    while True:
        try:
            await loop()
        except asyncio.CancelledError:
            raise
        except Exception:
            delay = backoff.next()
            logging.getLogger(__name__).exception("%s failed; restarting in %.2fs", what, delay)
            await sleep(delay)
