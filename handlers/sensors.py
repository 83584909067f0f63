"""Event-driven sensors: they raise :class:`~orchestrator.deferral.Defer` and
hold no worker slot while they wait. The wait ends when intake records the
matching event (found by correlation key), or at its timeout.

An event recorded *before* the sensor starts still satisfies it, as long as it
arrived after the run was created (``since`` moves that window).
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Annotated, Any

from pydantic import Field

from orchestrator.context import TaskContext
from orchestrator.deferral import (
    Defer,
    TimeoutOutcome,
    callback_key,
    channel_key,
    correlation_key,
    run_key,
)
from orchestrator.errors import NonRetryableError
from orchestrator.globs import glob_regex
from orchestrator.handler_inputs import PositiveSeconds
from orchestrator.registry import handler

CALLBACK_PATH = "/api/v1/callbacks/"


def _outcome(on_timeout: str) -> TimeoutOutcome:
    if on_timeout not in ("failed", "skipped"):
        raise NonRetryableError(f"on_timeout must be 'failed' or 'skipped', not {on_timeout!r}")
    return "failed" if on_timeout == "failed" else "skipped"


def _since(since: str | None) -> datetime | None:
    if since is None:
        return None
    try:
        when = datetime.fromisoformat(since)
    except ValueError:
        raise NonRetryableError(f"since {since!r} is not an ISO 8601 date-time") from None
    if when.tzinfo is None:
        raise NonRetryableError(f"since {since!r} needs a time zone offset")
    return when


@handler("sensor.kafka")
async def kafka(
    ctx: TaskContext,
    *,
    topic: str,
    correlation: str,
    equals: Any,
    timeout_s: PositiveSeconds | None = None,
    on_timeout: TimeoutOutcome = "failed",
    since: str | None = None,
) -> None:
    """Wait for a message on ``topic`` whose ``correlation`` (JMESPath over
    ``payload``/``headers``/``meta``, e.g. ``payload.order_id``) equals
    ``equals`` (usually a template such as ``{{ params.order_id }}``).
    ``topic`` and ``correlation`` must be literal: intake computes the keys."""
    if equals is None:
        raise NonRetryableError("sensor.kafka: 'equals' rendered to null; nothing could match")
    raise Defer(
        "kafka",
        f"a message on {topic} with {correlation} = {equals!r}",
        match_key=correlation_key("kafka", topic, correlation, equals),
        timeout_s=timeout_s,
        on_timeout=_outcome(on_timeout),
        since=_since(since),
        config={"topic": topic, "correlation": correlation, "equals": equals},
    )


@handler("sensor.file")
async def file(
    ctx: TaskContext,
    *,
    path: str,
    timeout_s: PositiveSeconds | None = None,
    on_timeout: TimeoutOutcome = "failed",
    since: str | None = None,
) -> None:
    """Wait for a complete file in the landing zone whose relative path matches
    ``path`` (a glob: ``*`` within a directory, ``**`` across). Completeness is
    the landing zone's: the sensor sees a file once intake records it."""
    if path.startswith("/") or ".." in path.split("/"):
        raise NonRetryableError(f"sensor.file: {path!r} must be relative to the landing zone")
    exact = not any(c in path for c in "*?[")
    raise Defer(
        "file",
        f"a file {path} in the landing zone",
        match_key=channel_key("file", path) if exact else None,
        match_pattern=None if exact else glob_regex(path).pattern,
        timeout_s=timeout_s,
        on_timeout=_outcome(on_timeout),
        since=_since(since),
        config={"path": path},
    )


#: Token characters a log may show: 24 of its 256 bits, enough to tell waits apart.
REVEALED = 4


def redacted_callback_url(token: str) -> str:
    """The callback URL with all but the token's first characters masked."""
    return f"{CALLBACK_PATH}{token[:REVEALED]}…"


@handler("sensor.callback")
async def callback(
    ctx: TaskContext,
    *,
    timeout_s: PositiveSeconds | None = None,
    on_timeout: TimeoutOutcome = "failed",
) -> None:
    """Wait for ``POST /api/v1/callbacks/{token}`` with ``{"status": "success" |
    "failed", "output": ...}``. The token is random (256 bits), works once, and
    expires with the timeout. Whoever holds it can end the wait, so the full URL
    is shown only to an operator who asks (``orchestrator show RUN``); logs get
    a masked form that tells waits apart without giving the token away."""
    token = secrets.token_urlsafe(32)
    url = CALLBACK_PATH + token
    ctx.log.info(
        "waiting for a callback: POST %s (the full URL: orchestrator show %s)",
        redacted_callback_url(token),
        ctx.run_id,
    )
    raise Defer(
        "callback",
        "a callback",  # the URL (it holds the token) stays out of logs and history
        match_key=callback_key(token),
        timeout_s=timeout_s,
        on_timeout=_outcome(on_timeout),
        config={"url": url},
    )


@handler("sensor.run")
async def run(
    ctx: TaskContext,
    *,
    workflow: str,
    state: str = "success",
    same_logical_date: bool = True,
    timeout_s: PositiveSeconds | None = None,
    on_timeout: TimeoutOutcome = "failed",
) -> None:
    """Wait for a run of ``workflow`` to end in ``state``: the one with this
    run's logical date (``same_logical_date``, the default for scheduled runs),
    or else its latest run. A run that ended so already satisfies it."""
    if state not in ("success", "failed", "cancelled"):
        raise NonRetryableError(
            f"sensor.run: state must be success, failed or cancelled, not {state!r}"
        )
    when: datetime | None = None
    if same_logical_date:
        if ctx.logical_date is None:
            raise NonRetryableError(
                "sensor.run: this run has no logical date; set same_logical_date: false "
                "to wait for the latest run instead"
            )
        when = datetime.fromisoformat(ctx.logical_date)
    which = f"for {when.isoformat()}" if when else "(latest)"
    raise Defer(
        "run",
        f"a run of {workflow} {which} to end {state}",
        match_key=run_key(workflow, when, state),
        timeout_s=timeout_s,
        on_timeout=_outcome(on_timeout),
        config={
            "workflow": workflow,
            "state": state,
            "logical_date": when.isoformat() if when else None,
        },
    )


@handler("sensor.poll")
async def poll(
    ctx: TaskContext,
    *,
    check: str,
    inputs: dict[str, Any] | None = None,
    interval_s: PositiveSeconds = 30.0,
    jitter: Annotated[float, Field(ge=0, le=1)] = 0.1,
    backoff: Annotated[float, Field(ge=1)] = 1.0,
    max_interval_s: PositiveSeconds | None = None,
    check_timeout_s: PositiveSeconds = 30.0,
    timeout_s: PositiveSeconds | None = None,
    on_timeout: TimeoutOutcome = "failed",
) -> None:
    """Wait until the registered handler ``check`` (called with ``inputs``)
    returns something truthy, which becomes this task's output. The triggerer
    calls it every ``interval_s`` (times ``backoff`` per check, up to
    ``max_interval_s``, spread by ``jitter``); no worker slot is held."""
    if interval_s <= 0 or check_timeout_s <= 0 or backoff < 1 or not 0 <= jitter <= 1:
        raise NonRetryableError(
            "sensor.poll: interval_s and check_timeout_s must be positive, backoff >= 1 "
            "and 0 <= jitter <= 1"
        )
    raise Defer(
        "poll",
        f"{check} to return a truthy result (every {interval_s:g}s)",
        wake_at=ctx.clock.now(),
        timeout_s=timeout_s,
        on_timeout=_outcome(on_timeout),
        config={
            "check": check,
            "inputs": inputs or {},
            "interval_s": interval_s,
            "jitter": jitter,
            "backoff": backoff,
            "max_interval_s": max_interval_s or interval_s,
            "check_timeout_s": check_timeout_s,
            "checks": 0,
        },
    )
