"""Webhook intake: ``POST /hooks/{name}`` turns an authentic request into a
durable event and answers ``202 {"event_id", "run_ids"}`` only after the commit
(with ``"paused": true`` and ``"paused_workflows"`` when paused workflows held it).

Hooks exist because workflows name them (``WebhookTrigger.hook``); every
trigger naming a hook must agree on its ``auth``. Secrets come only from the
environment (``ORCHESTRATOR_WEBHOOK_SECRET_<HOOK>``, several separated by
spaces or commas during a rotation), never from workflow files.

Answers, in the order they are checked:

- 404: no workflow names this hook.
- 500: workflows disagree on the hook's ``auth`` (the message names them).
- 503 + ``Retry-After``: the hook needs a secret and none is set (or it is
  malformed). 503 rather than 401 because the sender is not at fault: a
  well-behaved sender retries, and once the operator sets the variable and
  restarts, the deliveries arrive — nothing is accepted unverified meanwhile.
- 415: the hook has ``auth: none`` and the request does not say
  ``Content-Type: application/json``: a web page could otherwise call an
  open hook cross-origin without a CORS preflight. (Signed hooks take any
  type; a page cannot forge their signatures.)
- 413: the body is over ``max_payload_bytes`` (``Content-Length`` is
  checked first, the limit is enforced again while reading).
- 401: the signature or token is missing or wrong; nothing is stored.
- 400: the body is not JSON (the message gives the position), is JSON that
  cannot be stored (a ``\\u0000`` in a string, nesting deeper than 128 levels;
  the message names where), or the delivery id is unusable.
- 503 + ``Retry-After``: the database cannot be reached; nothing is stored.
- 202: stored. The delivery id (``webhook-id``, ``X-GitHub-Delivery``, else
  ``Idempotency-Key``) is the dedup key: a repeated delivery gets the original
  answer and starts nothing. Without any id, a random one is used.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
from aiohttp import web
from multidict import CIMultiDictProxy

from orchestrator import signatures
from orchestrator.api_rules import is_json_media_type
from orchestrator.clock import Clock
from orchestrator.group_commit import BatcherClosedError, GroupCommit
from orchestrator.intake import Event, Router
from orchestrator.json_limits import may_be_unstorable, unstorable
from orchestrator.problems import FieldError, json_response, problem, unavailable
from orchestrator.secrets import Secrets, SettingSecretError, setting_secret
from orchestrator.settings import Settings, webhook_secret_variable
from orchestrator.sources import SourceContext
from orchestrator.store import UNAVAILABLE
from sources.models import WebhookTrigger

log = logging.getLogger(__name__)

#: Longest delivery id taken as a dedup key.
MAX_DELIVERY_ID = 200
#: Request headers always kept on the event (names are stored lower-cased).
KEPT_HEADERS = frozenset(
    {
        "content-type",
        "user-agent",
        "idempotency-key",
        "webhook-id",
        "webhook-timestamp",
        "x-github-event",
        "x-github-delivery",
        "x-github-hook-id",
        "x-request-id",
    }
)
#: Other ``X-*`` and ``webhook-*`` headers are kept unless their name suggests a credential.
_CREDENTIAL = re.compile(r"authorization|signature|secret|token|cookie|password|api[-_]?key", re.I)


@dataclass(frozen=True, slots=True)
class Hook:
    name: str
    auth: str
    workflows: tuple[str, ...]
    conflict: str | None = None
    """Why the hook is refused: workflows that disagree on ``auth`` (or ``secret``)."""
    secret: str | None = None
    """The secret its triggers name (``{{ secrets.NAME }}``); None: the hook's variable."""


def hooks_of(router: Router) -> dict[str, Hook]:
    """Each hook the workflows name, with its agreed auth (or the conflict)."""
    hooks = {}
    for name in router.channels("webhook"):
        by_workflow: dict[str, WebhookTrigger] = {}
        for route in router.routes_on("webhook", name):
            if isinstance(route.trigger, WebhookTrigger):
                by_workflow.setdefault(route.workflow, route.trigger)
        workflows = tuple(sorted(by_workflow))
        settings = {w: t.shared_setting().value for w, t in by_workflow.items()}
        conflict = None
        if len(set(settings.values())) > 1:
            listed = ", ".join(f"{w} uses {a!r}" for w, a in sorted(settings.items()))
            conflict = f"webhook {name!r} has conflicting auth settings: {listed}"
        first = by_workflow[workflows[0]] if workflows else None
        hooks[name] = Hook(
            name,
            first.auth if first is not None else "standard",
            workflows,
            conflict,
            first.secret_settings().get("secret") if first is not None else None,
        )
    return hooks


#: A body the ``sales_hook`` example accepts, for the ``dev`` banner.
SALES_EXAMPLE = '{"type": "sale.created", "sale": {"id": "S-1", "region": "emea", "amount": 129.5}}'


def ensure_dev_secret(hook: str, auth: str = "standard") -> str | None:
    """For ``orchestrator dev`` only: when the hook's variable is unset, put a
    random secret in this process's environment and return it (None when one
    is set already). Nothing is written anywhere."""
    variable = webhook_secret_variable(hook)
    if os.environ.get(variable):
        return None
    os.environ[variable] = secret = signatures.generate_secret(auth)
    return secret


def dev_banner(hook: str = "sales", body: str = SALES_EXAMPLE) -> list[str]:
    """``orchestrator dev`` banner lines: a ready-to-paste command that sends
    ``hook`` a signed delivery (making up the hook's secret when it is unset)."""
    made = ensure_dev_secret(hook)
    variable = webhook_secret_variable(hook)
    command = f"orchestrator hook-send {hook} '{body}'"
    if made is None:
        return [
            f"Send webhook {hook!r} a signed delivery (with {variable} exported):",
            f"  {command}",
        ]
    return [
        f"Webhook {hook!r}: {variable} is unset, so this session made one up. Send it a delivery:",
        f"  {variable}={made} {command}",
    ]


def selected_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The request headers worth keeping on the event: never credentials."""
    kept = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower in KEPT_HEADERS or (
            lower.startswith(("x-", "webhook-")) and not _CREDENTIAL.search(lower)
        ):
            kept[lower] = value
    return kept


class WebhookSource:
    """The ``webhook`` event source (see the module docstring)."""

    name = "webhook"

    def __init__(self, *, max_batch: int = 256, flushers: int = 3) -> None:
        self._max_batch = max_batch
        self._flushers = flushers
        self._hooks: dict[str, Hook] = {}
        self._reported: set[str] = set()
        self._keys_of: dict[str, tuple[bytes, ...]] = {}
        """Parsed secrets of the usable hooks, refreshed whenever the workflows change."""
        self._settings: Settings | None = None
        self._secrets: Secrets | None = None
        self._clock: Clock | None = None
        self.batcher: GroupCommit | None = None

    def setup(self, ctx: SourceContext) -> None:
        self._settings = ctx.settings
        self._clock = ctx.clock
        self._report()
        if ctx.http is None:
            log.info("this process serves no HTTP: webhooks are not taken here")
            return
        self.batcher = GroupCommit(
            ctx.intake,
            delay_s=ctx.settings.intake_batch_delay_s,
            max_batch=self._max_batch,
            flushers=self._flushers,
        )
        ctx.http.router.add_post("/hooks/{name}", self.handle)

    def use_router(self, router: Router) -> None:
        # The orchestrator may hand over its first router before ``setup``.
        self._hooks = hooks_of(router)
        if self._settings is not None:
            self._report()

    def _report(self) -> None:
        """Log each configuration problem once per process, naming what to fix."""
        self._keys_of = {}
        for hook in self._hooks.values():
            problem_text = self._config_problem(hook)
            if problem_text and problem_text not in self._reported:
                self._reported.add(problem_text)
                log.error("%s", problem_text)
            elif hook.auth == "none" and f"open:{hook.name}" not in self._reported:
                self._reported.add(f"open:{hook.name}")
                log.warning(
                    "webhook %r takes unauthenticated requests (auth: none); use it locally only",
                    hook.name,
                )

    async def start(self) -> None:
        if self.batcher is not None:
            await self.batcher.start()

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()

    async def not_ready(self) -> str | None:
        # Deliveries are answered by the API's own server: ready when it is.
        return None

    # -- configuration ---------------------------------------------------------

    def _secret(self, hook: Hook) -> str | None:
        """The hook's secret: the one its triggers name, read from the secret
        backends now, else its variable. Raises :class:`SettingSecretError`
        (naming the secret) when the one named is not set."""
        assert self._settings is not None
        if hook.secret is not None:
            if self._secrets is None:
                self._secrets = Secrets.from_settings(self._settings)
            return setting_secret(self._secrets, f"webhook {hook.name!r} secret", hook.secret)
        secret = self._settings.webhook_secret(hook.name)
        return secret.get_secret_value() if secret is not None else None

    def _keys(self, hook: Hook) -> tuple[bytes, ...] | str:
        """The hook's keys, or why it cannot be used (no secret set, malformed)."""
        try:
            raw = self._secret(hook)
        except SettingSecretError as exc:
            return str(exc)
        variable = (
            webhook_secret_variable(hook.name) if hook.secret is None else f"secret {hook.secret!r}"
        )
        if raw is None:
            return f"webhook {hook.name!r} (auth {hook.auth!r}) has no secret: set {variable}"
        try:
            if hook.auth == "standard":
                keys = signatures.standard_keys(raw)
            else:
                keys = signatures.plain_keys(raw)
        except signatures.SecretFormatError as exc:
            return f"webhook {hook.name!r}: {variable} is unusable: {exc}"
        self._keys_of[hook.name] = keys
        return keys

    def _config_problem(self, hook: Hook) -> str | None:
        if hook.conflict:
            return hook.conflict + "; requests to it are refused until the workflows agree"
        if hook.auth == "none":
            return None
        keys = self._keys(hook)
        return keys if isinstance(keys, str) else None

    # -- requests ------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.Response:
        assert self._settings is not None and self._clock is not None
        name = request.match_info["name"]
        hook = self._hooks.get(name)
        if hook is None:
            return problem(404, f"no webhook named {name!r}")
        if hook.conflict:
            return problem(500, hook.conflict)
        keys: tuple[bytes, ...] = ()
        if hook.auth != "none":
            found = self._keys_of.get(name) or self._keys(hook)
            if isinstance(found, str):
                return problem(
                    503,
                    f"webhook {name!r} is not configured on this server yet; retry later",
                    {"Retry-After": "60"},
                )
            keys = found
        elif not _labelled_json(request):
            # Nothing authenticates an open hook: a web page must not be able to
            # call it cross-origin, and it cannot send a JSON type without a preflight.
            return problem(
                415,
                f"webhook {name!r} takes no signature, so its requests must say "
                "Content-Type: application/json",
                errors=[FieldError("header", "Content-Type", "expected application/json")],
            )
        limit = self._settings.max_payload_bytes
        length = request.content_length
        if length is not None and length > limit:
            return _too_large(limit)
        if length is not None:
            # The HTTP parser stops at Content-Length, which is within the limit.
            body = await request.read()
        else:
            received = bytearray()
            async for chunk in request.content.iter_any():
                received += chunk
                if len(received) > limit:
                    return _too_large(limit)
            body = bytes(received)
        headers = request.headers
        refused = self._verify(hook, keys, headers, body)
        if refused is not None:
            log.info("webhook %s: refused a request from %s: %s", name, request.remote, refused)
            extra = {"WWW-Authenticate": "Bearer"} if hook.auth == "bearer" else None
            return problem(401, refused, extra)
        delivery_id = _delivery_id(hook.auth, headers)
        if delivery_id is not None and len(delivery_id) > MAX_DELIVERY_ID:
            return problem(400, f"delivery id is longer than {MAX_DELIVERY_ID} characters")
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return problem(400, f"body is not valid JSON: {exc}")
        if may_be_unstorable(body):
            unfit = unstorable(payload)
            if unfit is not None:
                detail = f"the payload cannot be stored: {unfit.describe()}"
                return problem(400, detail, errors=[FieldError("body", unfit.path, detail)])
        if delivery_id is None:
            # No id from the sender: this delivery cannot be deduplicated.
            delivery_id = f"random-{uuid.uuid4().hex}"
        event = Event(
            source="webhook",
            channel=name,
            dedup_key=f"webhook:{name}:{delivery_id}",
            payload=payload,
            headers=selected_headers(headers),
            meta={"hook": name, "delivery_id": delivery_id},
            actor=f"webhook:{name}",
        )
        assert self.batcher is not None
        try:
            accepted = await self.batcher.submit(event)
        except BatcherClosedError:
            return unavailable("webhook intake is stopping; retry later")
        except UNAVAILABLE as exc:
            log.warning("webhook %s: database unavailable, answered 503: %s", name, exc)
            return unavailable()
        except asyncpg.DataError as exc:
            # Valid JSON that PostgreSQL's jsonb refuses, e.g. a "\u0000" in a string.
            return problem(400, f"the payload cannot be stored: {exc}")
        except Exception:
            log.exception("webhook %s: the event could not be stored", name)
            return problem(500, "internal error: the event was not stored; retry later")
        answer: dict[str, Any] = {"event_id": accepted.event_id, "run_ids": accepted.run_ids}
        if accepted.paused:
            # Stored all the same; what happens to it is the workflow's on_pause.
            answer["paused"] = True
            answer["paused_workflows"] = accepted.paused
        return json_response(answer, 202)

    def _verify(
        self, hook: Hook, keys: tuple[bytes, ...], headers: CIMultiDictProxy[str], body: bytes
    ) -> str | None:
        assert self._settings is not None and self._clock is not None
        if hook.auth == "standard":
            return signatures.verify_standard(
                keys,
                msg_id=headers.get("webhook-id"),
                timestamp=headers.get("webhook-timestamp"),
                signature=headers.get("webhook-signature"),
                body=body,
                now=self._clock.now().timestamp(),
                tolerance_s=self._settings.webhook_tolerance_s,
            )
        if hook.auth == "github":
            return signatures.verify_github(
                keys, signature=headers.get("X-Hub-Signature-256"), body=body
            )
        if hook.auth == "bearer":
            return signatures.verify_bearer(keys, authorization=headers.get("Authorization"))
        return None


def _delivery_id(auth: str, headers: CIMultiDictProxy[str]) -> str | None:
    if auth == "standard":
        found = headers.get("webhook-id")
    elif auth == "github":
        found = headers.get("X-GitHub-Delivery")
    else:
        found = None
    return found or headers.get("Idempotency-Key") or None


def _labelled_json(request: web.Request) -> bool:
    return "Content-Type" in request.headers and is_json_media_type(request.content_type)


def _too_large(limit: int) -> web.Response:
    return problem(413, f"body is larger than the limit of {limit} bytes")
