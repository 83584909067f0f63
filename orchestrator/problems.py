"""Errors over HTTP: every error answer is an RFC 9457 problem document.

``{"type", "title", "status", "detail"}`` as ``application/problem+json``,
plus ``errors`` (which input was wrong: ``{"in", "name", "detail"}``) when a
field is to blame, and ``error`` (the same text as ``detail``), which clients
written before the problem shape still read.

Handlers return :func:`problem` answers or raise :class:`BadInput`; the
middleware turns everything else into a problem too: the router's 404 and
405, aiohttp's 413, an unreachable database (503) and any unexpected
exception (500, logged here with a reference, never sent to the client).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from orchestrator.errors import OrchestratorError
from orchestrator.store import UNAVAILABLE

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

Location = Literal["path", "query", "header", "body"]


def json_response(
    data: Any,
    status: int = 200,
    headers: dict[str, str] | None = None,
    *,
    content_type: str = "application/json",
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, default=str),
        status=status,
        content_type=content_type,
        headers=headers,
    )


@dataclass(frozen=True, slots=True)
class FieldError:
    """One input that was refused, and why."""

    location: Location
    name: str
    detail: str

    def as_json(self) -> dict[str, str]:
        return {"in": self.location, "name": self.name, "detail": self.detail}


def problem(
    status: int,
    detail: str,
    headers: dict[str, str] | None = None,
    *,
    errors: Sequence[FieldError] = (),
    extra: Mapping[str, Any] | None = None,
) -> web.Response:
    """A problem answer; ``extra`` adds extension members (RFC 9457 §3.2)
    that say more about what was wrong, such as the declared params."""
    body: dict[str, Any] = {
        **(extra or {}),
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "error": detail,
    }
    if errors:
        body["errors"] = [e.as_json() for e in errors]
    return json_response(body, status, headers, content_type=PROBLEM_JSON)


def unavailable(detail: str = "database unavailable; retry later") -> web.Response:
    return problem(503, detail, {"Retry-After": "5"})


class BadInput(OrchestratorError):
    """Raised by a handler when one input is unusable; answered as a 4xx problem."""

    def __init__(self, location: Location, name: str, detail: str, *, status: int = 400) -> None:
        self.field = FieldError(location, name, detail)
        self.status = status
        super().__init__(detail)

    def response(self) -> web.Response:
        return problem(self.status, self.field.detail, errors=[self.field])


class BadFields(BadInput):
    """Several inputs are unusable at once (a body a model refused)."""

    def __init__(self, fields: Sequence[FieldError], detail: str) -> None:
        super().__init__(fields[0].location, fields[0].name, detail)
        self.fields = list(fields)

    def response(self) -> web.Response:
        return problem(self.status, str(self), errors=self.fields)


#: Headers of an aiohttp HTTP error worth keeping on the problem answer.
_KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate")


def _from_http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    if exc.status == 404:
        detail = f"no such resource: {request.path}"
    elif isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        detail = f"method {request.method} is not allowed on {request.path}; allowed: {allowed}"
    else:
        detail = exc.text if exc.text and exc.content_type == "text/plain" else exc.reason
    headers = {name: exc.headers[name] for name in _KEPT_HEADERS if name in exc.headers}
    return problem(exc.status, detail, headers or None)


@web.middleware
async def problems_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadInput as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects and the like are answers, not errors
        return _from_http_error(request, exc)
    except Exception as exc:
        if request.transport is None or request.transport.is_closing():
            raise  # the client is gone (its reset is an OSError too): nobody to answer
        if isinstance(exc, UNAVAILABLE):
            log.warning("%s %s: database unavailable: %s", request.method, request.path, exc)
            return unavailable()
        reference = uuid.uuid4().hex[:12]
        log.exception("%s %s failed (reference %s)", request.method, request.path, reference)
        return problem(500, f"internal error (reference {reference}); the server log has more")
