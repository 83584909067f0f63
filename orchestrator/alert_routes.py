"""Where alerts go: the built-in routes (``webhook``, ``slack``, ``log``) and
those packages register under the entry point group ``orchestrator.alert_routes``.

A route is an object with an ``options_model`` (a pydantic model of the keys a
rule's route entry may carry beside ``type``, ``name`` and ``max_per_minute``)
and ``async send(message, options, ctx)``, which returns once the receiver has
the alert and raises :class:`DeliveryError` otherwise (``retryable=False``
when trying again cannot help). The entry point's object is called once to
make the route.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import entry_points
from typing import Any, Protocol

import aiohttp
import orjson
from pydantic import BaseModel

from orchestrator.alert_spec import LogOptions, SlackOptions, WebhookOptions, secret_reference
from orchestrator.clock import Clock
from orchestrator.errors import OrchestratorError
from orchestrator.secrets import Secrets
from orchestrator.signatures import standard_headers
from orchestrator.task_logs import mask

log = logging.getLogger("orchestrator.alerts")

ENTRY_POINT_GROUP = "orchestrator.alert_routes"


class DeliveryError(OrchestratorError):
    """A route could not hand the alert over. The message never holds a secret."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        self.retryable = retryable
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Message:
    """One alert as every route receives it."""

    id: str
    """Stable across retries of the same delivery (the ``webhook-id``)."""
    payload: dict[str, Any]
    """The full context (see README "Alerts and SLAs")."""
    summary: str
    """One line for humans."""


@dataclass(slots=True)
class RouteContext:
    session: aiohttp.ClientSession
    secrets: Secrets
    clock: Clock
    used: set[str] = field(default_factory=set)
    """Secret values resolved so far: masked out of any error."""

    def resolve(self, value: str) -> str:
        """``value``, or the secret it refers to (``{{ secrets.NAME }}``)."""
        name = secret_reference(value)
        if name is None:
            return value
        found = self.secrets.get(name)
        if found is None:
            raise DeliveryError(f"secret {name!r} is not set", retryable=False)
        self.used.add(found)
        return found

    def masked(self, text: str) -> str:
        return mask(text, self.used)


class AlertRoute(Protocol):
    options_model: type[BaseModel]

    async def send(self, message: Message, options: Any, ctx: RouteContext) -> None: ...


async def _post(
    ctx: RouteContext, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float
) -> None:
    try:
        async with ctx.session.post(
            url,
            data=body,
            headers={"content-type": "application/json", **headers},
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as response:
            if response.status < 300:
                return
            # 4xx other than 408/429: the receiver refuses this alert for good.
            retryable = response.status >= 500 or response.status in (408, 429)
            raise DeliveryError(f"receiver answered HTTP {response.status}", retryable=retryable)
    except DeliveryError:
        raise
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        text = str(exc) or type(exc).__name__
        raise DeliveryError(ctx.masked(f"{type(exc).__name__}: {text}")) from None


class WebhookRoute:
    """A JSON POST of the whole context, signed with Standard Webhooks."""

    options_model: type[BaseModel] = WebhookOptions

    async def send(self, message: Message, options: Any, ctx: RouteContext) -> None:
        assert isinstance(options, WebhookOptions)
        url = ctx.resolve(options.url)
        secret = ctx.resolve(options.secret)
        body = orjson.dumps(message.payload)
        timestamp = int(ctx.clock.now().timestamp())
        try:
            headers = standard_headers(secret, message.id, timestamp, body)
        except ValueError as exc:
            raise DeliveryError(f"signing secret unusable: {exc}", retryable=False) from None
        await _post(ctx, url, body, headers, options.timeout_s)


class SlackRoute:
    """A compact message to a Slack incoming webhook."""

    options_model: type[BaseModel] = SlackOptions

    async def send(self, message: Message, options: Any, ctx: RouteContext) -> None:
        assert isinstance(options, SlackOptions)
        url = ctx.resolve(options.url)
        links = message.payload.get("links", {})
        text = message.summary
        if links.get("ui"):
            text += f" <{links['ui']}|open run>"
        tail = message.payload.get("log_tail") or []
        if tail:
            text += "\n```" + "\n".join(tail[-5:])[-1500:] + "```"
        await _post(ctx, url, orjson.dumps({"text": text}), {}, options.timeout_s)


class LogRoute:
    """One structured line on the ``orchestrator.alerts`` logger."""

    options_model: type[BaseModel] = LogOptions

    async def send(self, message: Message, options: Any, ctx: RouteContext) -> None:
        assert isinstance(options, LogOptions)
        level = logging.getLevelName(options.level.upper())
        log.log(
            level,
            "alert %s: %s",
            message.id,
            message.summary,
            extra={"alert": message.payload},
        )


BUILT_IN: dict[str, Callable[[], AlertRoute]] = {
    "webhook": WebhookRoute,
    "slack": SlackRoute,
    "log": LogRoute,
}


@cache
def installed_routes() -> dict[str, AlertRoute]:
    """The built-in routes and those of the entry point group (first name wins)."""
    routes: dict[str, AlertRoute] = {name: make() for name, make in BUILT_IN.items()}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in routes:
            log.warning("alert route %r from %s is ignored: the name is taken", ep.name, ep.value)
            continue
        try:
            routes[ep.name] = ep.load()()
        except Exception:
            log.exception("alert route %r (%s) could not be loaded", ep.name, ep.value)
    return routes
