"""Deferring: a task that must wait gives up its worker slot.

A handler (a built-in sensor, or any handler in the middle of its work)
raises :class:`Defer`. The worker records the attempt as ``deferred`` and a
row in ``deferrals`` in one transaction, then frees the slot. The wait ends
exactly once, through a guarded update of that row:

- an event-driven wait (Kafka message, file, callback) by the intake
  transaction that stores the matching event, found by correlation key;
- a time wait, a poll or a timeout by the triggerer;
- a wait on another run by the transaction that ends that run.

Correlation keys are plain strings built by the helpers below, so the side
that records an event and the side that waits for it always agree.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from orchestrator.errors import OrchestratorError

TimeoutOutcome = Literal["failed", "skipped"]


class Defer(OrchestratorError):
    """Raised by a handler to wait without holding a worker slot."""

    def __init__(
        self,
        kind: str,
        description: str,
        *,
        timeout_s: float | None = None,
        on_timeout: TimeoutOutcome = "failed",
        match_key: str | None = None,
        match_pattern: str | None = None,
        since: datetime | None = None,
        wake_at: datetime | None = None,
        config: dict[str, Any] | None = None,
        resume: Literal["success", "handler"] = "success",
    ) -> None:
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, not {timeout_s}")
        self.kind = kind
        self.description = description
        self.timeout_s = timeout_s
        self.on_timeout = on_timeout
        self.match_key = match_key
        self.match_pattern = match_pattern
        self.since = since
        self.wake_at = wake_at
        self.config = config or {}
        self.resume = resume
        super().__init__(f"deferred: {description}")


@dataclass(slots=True)
class Resolution:
    """How one wait ends."""

    deferral_id: int
    outcome: Literal["success", "failed", "skipped", "resume"]
    """``resume``: the handler is queued again and called with ``ctx.resumed``."""
    payload: Any = None
    """The task's output (success) or what the resumed handler receives."""
    reason: str = ""
    event_id: int | None = None
    error: str | None = None
    timed_out: bool = False
    """The wait ran out of time (alert rules may be set on it)."""
    run_id: int | None = None
    """The wait's run, when the caller read it with the wait (saves a read)."""


def correlation_key(source: str, channel: str, expression: str, value: Any) -> str:
    """The key of an event of ``source`` on ``channel`` whose ``expression``
    evaluates to ``value`` (see :class:`~orchestrator.plugins.SensorKeys`)."""
    value_json = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    return f"{source}:{channel}:{expression}:{value_json}"


def channel_key(source: str, channel: str) -> str:
    """The key of every event of ``source`` on ``channel``: what a wait on one
    exact channel names (e.g. a landed file's path)."""
    return f"{source}:{channel}"


def callback_key(token: str) -> str:
    """Keys and indexes hold a hash of the token. The token itself is kept only
    in the wait's config (for ``orchestrator show``), never in its description,
    the transition log or the API."""
    return "callback:" + hashlib.sha256(token.encode()).hexdigest()


def run_key(workflow: str, logical_date: datetime | None, state: str) -> str:
    """A run of ``workflow`` ending in ``state``: for its logical date, or for
    "the latest run" when ``logical_date`` is None."""
    when = logical_date.astimezone(UTC).isoformat() if logical_date is not None else "latest"
    return f"run:{workflow}:{when}:{state}"
