"""What every ``/api/v1`` request must look like, checked before its handler runs.

- A body-carrying method (POST, PUT, PATCH) must say ``Content-Type:
  application/json`` (or ``application/<x>+json``; charset, if given, UTF-8),
  with or without a body: 415 otherwise. A web page can send other types
  (``text/plain``, forms, nothing) cross-origin without a CORS preflight; it
  cannot send JSON that way, so this rule is what keeps an open browser tab
  from starting runs on a local server.
- The body must be UTF-8, and JSON that can be stored (no NUL character, not
  nested too deep: see :mod:`orchestrator.json_limits`). Bodies that are not
  JSON at all are left to the handler, which says where the syntax is wrong.
- Path and query values must not contain NUL; ``Idempotency-Key`` is bounded.

Handlers parse integers with :func:`path_int` and :func:`query_int`.
"""

from __future__ import annotations

import re

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from orchestrator.json_limits import unstorable
from orchestrator.problems import BadInput, FieldError, problem

API_PREFIX = "/api/v1/"
JSON_TYPE = "application/json"
MAX_IDEMPOTENCY_KEY = 200
"""Longest ``Idempotency-Key`` taken (it becomes part of an indexed dedup key)."""
#: Largest value of a PostgreSQL bigint: every id is one.
MAX_ID = 2**63 - 1

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
#: The body as parsed JSON, once these rules have parsed it (see api_bodies.json_body).
PARSED_BODY = web.RequestKey("parsed_body", object)
_JSON_MEDIA = re.compile(r"application/(?:[a-z0-9.+-]+\+)?json\Z")
_DIGITS = re.compile(r"[0-9]{1,30}\Z")


def is_json_media_type(content_type: str) -> bool:
    return _JSON_MEDIA.match(content_type) is not None


def _nul_in_parameters(request: web.Request) -> FieldError | None:
    for name, value in request.match_info.items():
        if "\x00" in value:
            return FieldError("path", name, f"path parameter {name!r} contains a NUL character")
    for name, value in request.query.items():
        if "\x00" in name or "\x00" in value:
            return FieldError("query", name, f"query parameter {name!r} contains a NUL character")
    return None


async def _body_problem(request: web.Request) -> web.Response | None:
    content_type = request.content_type  # lower-cased; "application/octet-stream" when absent
    if "Content-Type" not in request.headers or not is_json_media_type(content_type):
        given = request.headers.get("Content-Type", "none")
        return problem(
            415,
            f"Content-Type must be {JSON_TYPE} (or application/<type>+json), not {given!r}",
            {"Accept-Post": JSON_TYPE} if request.method == "POST" else None,
            errors=[FieldError("header", "Content-Type", f"expected {JSON_TYPE}")],
        )
    charset = request.charset
    if charset is not None and charset.lower().replace("-", "") != "utf8":
        return problem(
            415,
            f"Content-Type must be {JSON_TYPE} in UTF-8, not charset {charset!r}",
            errors=[FieldError("header", "Content-Type", "expected charset utf-8")],
        )
    if not request.can_read_body:
        return None
    raw = await request.read()  # kept by aiohttp: the handler reads it again for free
    try:
        document = orjson.loads(raw)
        request[PARSED_BODY] = document  # handlers take it from here: parsed once
    except orjson.JSONDecodeError:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            detail = f"body is not valid UTF-8 (byte {exc.start})"
            return problem(400, detail, errors=[FieldError("body", "body", detail)])
        return None  # not JSON: the handler says what is wrong with it
    found = unstorable(document)
    if found is not None:
        detail = found.describe()
        return problem(400, detail, errors=[FieldError("body", found.path, detail)])
    return None


@web.middleware
async def api_rules_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith(API_PREFIX) or request.match_info.http_exception is not None:
        return await handler(request)  # not the API, or no such route: the router answers
    bad = _nul_in_parameters(request)
    if bad is not None:
        return problem(400, bad.detail, errors=[bad])
    key = request.headers.get("Idempotency-Key")
    if key is not None and len(key) > MAX_IDEMPOTENCY_KEY:
        detail = f"Idempotency-Key is longer than {MAX_IDEMPOTENCY_KEY} characters"
        return problem(400, detail, errors=[FieldError("header", "Idempotency-Key", detail)])
    if request.method in _BODY_METHODS:
        refused = await _body_problem(request)
        if refused is not None:
            return refused
    return await handler(request)


def _bounded_int(text: str, low: int, high: int) -> int | None:
    if not _DIGITS.match(text):
        return None
    value = int(text)
    return value if low <= value <= high else None


def path_int(request: web.Request, name: str, *, low: int = 1, high: int = MAX_ID) -> int:
    """The path parameter ``name`` as an integer in [low, high], else :class:`BadInput`."""
    value = _bounded_int(request.match_info[name], low, high)
    if value is None:
        raise BadInput("path", name, f"{name} must be an integer from {low} to {high}")
    return value


def query_int(
    request: web.Request, name: str, *, default: int, low: int = 1, high: int = MAX_ID
) -> int:
    """The query parameter ``name`` as an integer in [low, high] (``default``
    when absent), else :class:`BadInput`."""
    text = request.query.get(name)
    if text is None:
        return default
    value = _bounded_int(text, low, high)
    if value is None:
        raise BadInput("query", name, f"'{name}' must be an integer from {low} to {high}")
    return value
