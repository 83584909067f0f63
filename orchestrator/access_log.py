"""Access log of the HTTP server: one INFO record per answer on the
``orchestrator.access`` logger, with the method, the path (tokens in callback
URLs masked, no query string), the status and the duration in milliseconds.

On by default (``ORCHESTRATOR_ACCESS_LOG``); ``dev`` leaves it off unless the
variable is set, to keep its terminal for what matters there."""

from __future__ import annotations

import logging
import re

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from orchestrator.clock import monotonic

log = logging.getLogger("orchestrator.access")

#: Path segments that are credentials: shown as ``***``.
_SECRET_SEGMENTS = re.compile(r"^(/api/v1/callbacks/)[^/]+")


def loggable_path(path: str) -> str:
    return _SECRET_SEGMENTS.sub(r"\1***", path)


def access_log_middleware(enabled: bool) -> Middleware:
    @web.middleware
    async def access(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not enabled or not log.isEnabledFor(logging.INFO):
            # Nothing would be written: spare the busiest routes the bookkeeping.
            return await handler(request)
        started = monotonic()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            log.info(
                "%s %s %d %.1fms",
                request.method,
                loggable_path(request.path),
                status,
                (monotonic() - started) * 1000,
                extra={
                    "method": request.method,
                    "path": loggable_path(request.path),
                    "status": status,
                },
            )

    return access
