"""Who may call ``/api/v1``: bearer tokens checked before any handler runs.

Every ``/api/v1`` route needs a token whose role allows it: reading needs
``viewer``, acting (any other method) needs ``operator``, and managing tokens
and pools needs ``admin`` (:func:`required_role`). Callbacks keep their own
authentication (the unguessable token in their URL), as do webhooks (their
signatures, outside ``/api/v1``).

A missing or unknown token is 401, a role that may not act is 403; neither
says more about what was wrong. Tokens are looked up by hash and cached for
a short time (both found and unknown ones), so authentication costs no
database round trip per request under load; a revoked or expired token is
refused within that time.

``ORCHESTRATOR_API_AUTH``: ``auto`` (the default) serves the API open to
callers on a loopback address only, and requires tokens on any other
address; ``tokens`` always requires them; ``none`` serves it open wherever
it listens, and must be set explicitly to do that off loopback.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from orchestrator.api_rules import API_PREFIX
from orchestrator.clock import Clock
from orchestrator.problems import problem
from orchestrator.store import Database
from orchestrator.tokens import Role, lookup, token_hash

log = logging.getLogger(__name__)

AuthMode = Literal["auto", "tokens", "none"]

#: Paths under /api/v1 that carry their own authentication, or none is needed.
_OWN_AUTH = (f"{API_PREFIX}callbacks/",)
_PUBLIC = frozenset({f"{API_PREFIX}openapi.json", f"{API_PREFIX}session"})
_ADMIN = (f"{API_PREFIX}tokens",)
_ADMIN_TO_CHANGE = (f"{API_PREFIX}pools",)
_READ_METHODS = frozenset({"GET", "HEAD"})
#: Unknown tokens remembered at most; past it the memory starts over.
_MAX_CACHED = 10_000
#: The browser's copy of its API token (HttpOnly, SameSite=Strict: see
#: :mod:`orchestrator.ui.session`).
SESSION_COOKIE = "orchestrator_session"
#: What a request authenticated by the cookie must carry to change anything.
CSRF_HEADER = "X-CSRF-Token"


def csrf_token(token: str) -> str:
    """The anti-forgery value that goes with a signed-in token.

    Derived from the token, so every replica agrees without shared state; the
    sign-in answer gives it to the page, which sends it back as a header. A
    page of another origin can make the browser send the cookie (SameSite
    aside) but can neither read this value nor set a custom header without
    a CORS preflight the server refuses."""
    return hashlib.sha256(b"orchestrator-csrf\0" + token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Identity:
    """The caller behind a valid token: its name is the recorded actor."""

    name: str
    role: Role


IDENTITY_KEY = web.RequestKey("identity", Identity)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tokens_required(mode: AuthMode, host: str) -> bool:
    return mode == "tokens" or (mode == "auto" and not is_loopback(host))


def required_role(method: str, path: str) -> Role | None:
    """The least role that may call ``method path``; None: no token needed."""
    if not path.startswith(API_PREFIX) or method == "OPTIONS":
        return None
    if path.startswith(_OWN_AUTH) or path in _PUBLIC:
        return None
    if path.startswith(_ADMIN):
        return Role.ADMIN
    if method in _READ_METHODS:
        return Role.VIEWER
    if path.startswith(_ADMIN_TO_CHANGE):
        return Role.ADMIN
    return Role.OPERATOR


@dataclass(slots=True)
class _Cached:
    until: datetime
    identity: Identity | None
    expires_at: datetime | None


class Authenticator:
    def __init__(self, db: Database, clock: Clock, *, cache_s: float, required: bool) -> None:
        self.db = db
        self.clock = clock
        self.cache_s = cache_s
        self.required = required
        self._cache: dict[bytes, _Cached] = {}
        self.lookups = 0
        """Database lookups made (the rest were answered from the cache)."""

    async def identify(self, token: str) -> Identity | None:
        """The token's identity, or None if it is unknown, revoked or expired."""
        now = self.clock.now()
        key = token_hash(token)
        cached = self._cache.get(key)
        if cached is None or cached.until <= now:
            cached = await self._load(token, key, now)
        if cached.expires_at is not None and cached.expires_at <= now:
            return None
        return cached.identity

    async def _load(self, token: str, key: bytes, now: datetime) -> _Cached:
        self.lookups += 1
        async with self.db.pool.acquire() as conn:
            row = await lookup(conn, token)
        identity = None
        expires_at = None
        if row is not None and row["revoked_at"] is None:
            identity = Identity(row["name"], Role.named(row["role"]))
            expires_at = row["expires_at"]
        if len(self._cache) >= _MAX_CACHED:
            self._cache.clear()
        entry = _Cached(now + timedelta(seconds=self.cache_s), identity, expires_at)
        self._cache[key] = entry
        return entry


def _unauthorized() -> web.Response:
    return problem(
        401,
        "a valid API token is required: send Authorization: Bearer <token> "
        "(`orchestrator tokens create` makes one)",
        {"WWW-Authenticate": 'Bearer realm="orchestrator"'},
    )


def auth_middleware(auth: Authenticator) -> Middleware:
    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        needed = required_role(request.method, request.path)
        if needed is None:
            return await handler(request)
        header = request.headers.get("Authorization")
        cookie = request.cookies.get(SESSION_COOKIE) if header is None else None
        if header is None and not cookie:
            if auth.required:
                return _unauthorized()
            return await handler(request)
        if header is not None:
            scheme, _, token = header.partition(" ")
            token = token.strip() if scheme.lower() == "bearer" else ""
        else:
            token = cookie or ""
            if request.method not in _READ_METHODS and not hmac.compare_digest(
                request.headers.get(CSRF_HEADER, ""), csrf_token(token)
            ):
                return problem(
                    403,
                    f"a request signed in by cookie must send the {CSRF_HEADER} header "
                    "that sign-in answered with",
                )
        identity = await auth.identify(token) if token else None
        if identity is None:
            return _unauthorized()  # a token that is sent is checked, even on an open API
        if identity.role < needed:
            return problem(
                403,
                f"this token's role ({identity.role.label}) may not do this; "
                f"it needs {needed.label} or above",
            )
        request[IDENTITY_KEY] = identity
        return await handler(request)

    return authenticate
