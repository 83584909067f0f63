"""The time sensor: wait until a moment without holding a worker slot.

It raises :class:`~orchestrator.deferral.Defer` with an absolute ``wake_at``;
the triggerer ends the wait when that time comes (or at the timeout, if that
comes first), also after a restart, since both times are stored with the wait.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from orchestrator.context import TaskContext
from orchestrator.deferral import Defer, TimeoutOutcome
from orchestrator.errors import NonRetryableError
from orchestrator.handler_inputs import PositiveSeconds, Seconds
from orchestrator.registry import handler

__all__ = ["time_sensor"]


def _number(name: str, value: Any, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise NonRetryableError(f"sensor.time: {name} must be a number of seconds, not {value!r}")
    if value < 0 or (positive and value == 0):
        bound = "positive" if positive else "zero or more"
        raise NonRetryableError(f"sensor.time: {name} must be {bound}, not {value!r}")
    return float(value)


def _moment(until: Any) -> datetime:
    if not isinstance(until, str):
        raise NonRetryableError(f"sensor.time: until must be an ISO 8601 string, not {until!r}")
    try:
        when = datetime.fromisoformat(until)
    except ValueError:
        raise NonRetryableError(
            f"sensor.time: until {until!r} is not an ISO 8601 date-time"
        ) from None
    if when.tzinfo is None:
        raise NonRetryableError(
            f"sensor.time: until {until!r} needs a time zone offset (e.g. Z or +02:00)"
        )
    return when.astimezone(UTC)


def _on_timeout(value: Any) -> TimeoutOutcome:
    if value == "failed":
        return "failed"
    if value == "skipped":
        return "skipped"
    raise NonRetryableError(f"sensor.time: on_timeout must be 'failed' or 'skipped', not {value!r}")


@handler("sensor.time")
async def time_sensor(
    ctx: TaskContext,
    *,
    until: str | None = None,
    delay_s: Seconds | None = None,
    timeout_s: PositiveSeconds | None = None,
    on_timeout: TimeoutOutcome = "failed",
) -> dict[str, str]:
    """Succeed at ``until`` (ISO 8601 with a time zone, e.g. a template such as
    ``{{ run.interval_end }}``) or ``delay_s`` seconds after the attempt starts;
    give exactly one. Output: ``{"wake_at": ..., "woke_at": ...}``.

    ``timeout_s`` bounds the wait from when it starts; if it comes first the
    task ends as ``on_timeout`` says: ``failed`` (downstream tasks follow their
    trigger rules) or ``skipped``. A moment already past succeeds at once.
    """
    if (until is None) == (delay_s is None):
        raise NonRetryableError("sensor.time: give exactly one of 'until' or 'delay_s'")
    outcome = _on_timeout(on_timeout)
    timeout = None if timeout_s is None else _number("timeout_s", timeout_s, positive=True)
    now = ctx.clock.now()
    if until is not None:
        wake_at = _moment(until)
    else:
        wake_at = now + timedelta(seconds=_number("delay_s", delay_s, positive=False))
    if wake_at <= now:
        return {"wake_at": wake_at.isoformat(), "woke_at": now.isoformat()}
    raise Defer(
        "time",
        f"the time {wake_at.isoformat()}",
        wake_at=wake_at,
        timeout_s=timeout,
        on_timeout=outcome,
        config={"wake_at": wake_at.isoformat()},
    )
