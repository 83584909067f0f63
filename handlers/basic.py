"""Built-in handlers with no side effects: placeholders and test doubles.

``fail`` and ``sleep`` exist mostly so that retries, timeouts and leases can be
exercised end to end with real workflows instead of special engine hooks.
"""

from __future__ import annotations

import math
from typing import Any

from orchestrator.context import TaskContext
from orchestrator.errors import NonRetryableError, TaskError
from orchestrator.handler_inputs import Seconds
from orchestrator.registry import handler

__all__ = ["echo", "fail", "noop", "sleep"]

DEFAULT_FAIL_MESSAGE = "failed on purpose"


@handler()
async def noop(ctx: TaskContext, **_inputs: Any) -> None:
    """Do nothing and return ``None``; any inputs are accepted and ignored, so a
    placeholder task can keep its inputs while its real handler is written."""
    return None


@handler()
async def echo(ctx: TaskContext, **inputs: Any) -> dict[str, Any]:
    """Return the task's rendered inputs unchanged (handy to inspect templates)."""
    return inputs


@handler()
async def fail(
    ctx: TaskContext,
    *,
    message: str = DEFAULT_FAIL_MESSAGE,
    non_retryable: bool = False,
    succeed_on_attempt: int | None = None,
) -> dict[str, int]:
    """Raise ``TaskError(message)``, or succeed from attempt ``succeed_on_attempt`` on.

    With ``succeed_on_attempt=3`` the first two attempts fail and the third
    returns ``{"attempt": 3}``: a deterministic way to test a retry policy.
    """
    if succeed_on_attempt is not None:
        if isinstance(succeed_on_attempt, bool) or not isinstance(succeed_on_attempt, int):
            raise NonRetryableError(
                f"fail: succeed_on_attempt must be an integer, got {succeed_on_attempt!r}"
            )
        if ctx.attempt >= succeed_on_attempt:
            return {"attempt": ctx.attempt}
    raise TaskError(str(message), non_retryable=bool(non_retryable))


@handler()
async def sleep(ctx: TaskContext, *, seconds: Seconds) -> None:
    """Wait ``seconds`` without blocking the worker, then return ``None``.

    Used to exercise task timeouts, cancellation and lease renewal.
    """
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not math.isfinite(seconds)
        or seconds < 0
    ):
        raise NonRetryableError(f"sleep: seconds must be a finite number >= 0, got {seconds!r}")
    await ctx.clock.sleep(seconds)
