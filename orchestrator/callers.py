"""Who an HTTP request acts as: the one place that decides the recorded actor.

The actor is decided by the server, never read from a client-supplied header
(anyone can send ``X-Actor: admin``). Until the API authenticates callers
with tokens, the identity is the kind of caller and its peer address, as the
server's socket sees it, unless the caller sent a valid API token: then its name.
"""

from __future__ import annotations

from aiohttp import web

from orchestrator.auth import IDENTITY_KEY


def actor_of(request: web.Request, via: str = "api") -> str:
    """The name of the caller's API token (:mod:`orchestrator.auth`); without
    one (an open API on loopback, a callback), ``via:peer``, e.g.
    ``api:127.0.0.1`` or ``callback:10.0.0.7``."""
    if IDENTITY_KEY in request:
        return request[IDENTITY_KEY].name
    return f"{via}:{request.remote or 'unknown'}"
