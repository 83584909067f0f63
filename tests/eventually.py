"""Wait on a condition with a deadline, never a fixed sleep."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from orchestrator.clock import monotonic, real_block, real_pause

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "condition",
) -> T:
    """Call ``probe`` until it returns a truthy value; fail after ``timeout``."""
    deadline = monotonic() + timeout
    last: T | None = None
    while True:
        last = await probe()
        if last:
            return last
        if monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        await real_pause(interval)


def wait_until(
    probe: Callable[[], T],
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Blocking twin of :func:`eventually` for tests that drive subprocesses."""
    deadline = monotonic() + timeout
    while True:
        last = probe()
        if last:
            return last
        if monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        real_block(interval)
