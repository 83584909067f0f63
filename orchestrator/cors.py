"""Cross-origin access to ``/api/v1``: none, unless origins are configured.

Browsers ask before a cross-origin request that is not "simple" (a JSON body,
an ``Idempotency-Key`` header) with an ``OPTIONS`` preflight. That preflight
is answered here: 204 with ``Access-Control-Allow-*`` headers for an origin in
``ORCHESTRATOR_CORS_ORIGINS``, 403 for any other. Responses to allowed origins
carry ``Access-Control-Allow-Origin`` so their pages can read them; nothing
else does, so other pages can neither send JSON nor read answers.
"""

from __future__ import annotations

from collections.abc import Collection

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from orchestrator.api_rules import API_PREFIX
from orchestrator.problems import problem

ALLOWED_HEADERS = "Authorization, Content-Type, Idempotency-Key"
PREFLIGHT_MAX_AGE_S = 600


def _preflight(request: web.Request, allowed: frozenset[str]) -> web.Response:
    routed = request.match_info.http_exception
    if not isinstance(routed, web.HTTPMethodNotAllowed):
        return problem(404, f"no such resource: {request.path}")
    methods = ", ".join(sorted(routed.allowed_methods | {"OPTIONS"}))
    origin = request.headers.get("Origin")
    if origin is None or "Access-Control-Request-Method" not in request.headers:
        return web.Response(status=204, headers={"Allow": methods})  # not a preflight
    if origin.lower() not in allowed:
        return problem(
            403,
            f"cross-origin requests from {origin!r} are not allowed "
            "(allowed origins are set by ORCHESTRATOR_CORS_ORIGINS)",
            {"Vary": "Origin"},
        )
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": methods,
            "Access-Control-Allow-Headers": ALLOWED_HEADERS,
            "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
            "Vary": "Origin",
        },
    )


def cors_middleware(origins: Collection[str]) -> Middleware:
    """CORS for ``/api/v1`` paths, allowing exactly ``origins`` (``scheme://host[:port]``)."""
    allowed = frozenset(origin.lower() for origin in origins)

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(API_PREFIX):
            return await handler(request)
        if request.method == "OPTIONS" and request.match_info.http_exception is not None:
            return _preflight(request, allowed)
        response = await handler(request)
        if allowed:
            origin = request.headers.get("Origin")
            if origin is not None and origin.lower() in allowed:
                response.headers["Access-Control-Allow-Origin"] = origin
            response.headers.add("Vary", "Origin")
        return response

    return cors
