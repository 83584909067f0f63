"""The ``http.request`` handler: one HTTP call with aiohttp's client.

Sessions are shared: one :class:`aiohttp.ClientSession` per event loop, made on
first use. A session owns the connection pool, so sharing it lets consecutive
tasks reuse keep-alive connections, TLS sessions and the DNS cache instead of
paying a TCP + TLS handshake per task; a session per call would also leave
sockets in TIME_WAIT under load. Sessions are keyed by loop because a session
and its connections belong to the loop that made them (tests and replicas may
run several loops). Whoever stops a loop that ran ``http.request`` awaits
:func:`close_sessions` on it first.

Error messages name the method, the URL and the status, but never a secret:
userinfo is dropped, query values of secret-looking keys become ``***``, and
known secret values (from the URL and credential headers) are scrubbed from
any text quoted from the server or from aiohttp.
"""

from __future__ import annotations

import asyncio
import codecs
import math
import re
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

import aiohttp
import orjson
from yarl import URL

from orchestrator.context import TaskContext
from orchestrator.errors import NonRetryableError, TaskError
from orchestrator.handler_inputs import ByteCount, PositiveSeconds
from orchestrator.registry import handler

__all__ = ["DEFAULT_MAX_RESPONSE_BYTES", "HTTPRequestError", "close_sessions", "request"]

DEFAULT_MAX_RESPONSE_BYTES = 1024 * 1024
_READ_CHUNK = 64 * 1024
_SNIPPET_BYTES = 512
_RETRYABLE_4XX = frozenset({408, 429})
_METHOD_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")

# A name is secret-looking if it contains one of these parts or is one of the
# exact names; redacting a harmless value by mistake costs nothing.
_SECRET_PARTS = (
    "token",
    "key",
    "secret",
    "passw",
    "pwd",
    "signature",
    "credential",
    "auth",
    "session",
    "cookie",
)
_SECRET_EXACT = frozenset({"sig", "code", "pass", "pw", "jwt", "sas"})
# Shorter values are not scrubbed from free text: they would mangle messages.
# URLs are redacted structurally whatever the value's length.
_MIN_SCRUB_LEN = 4
_REDACTED = "***"


class HTTPRequestError(TaskError):
    """An ``http.request`` attempt failed.

    ``url`` is already redacted; ``status`` is None when no response arrived.
    """

    def __init__(
        self, message: str, *, method: str, url: str, status: int | None, non_retryable: bool
    ) -> None:
        self.method = method
        self.url = url
        self.status = status
        super().__init__(message, non_retryable=non_retryable)


# --- shared sessions ---------------------------------------------------------

_sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}
# Loops in other threads may create sessions at the same time.
_sessions_lock = threading.Lock()


def _session() -> aiohttp.ClientSession:
    loop = asyncio.get_running_loop()
    session = _sessions.get(loop)
    if session is not None and not session.closed:
        return session
    with _sessions_lock:
        _forget_closed_loops()
        session = aiohttp.ClientSession(
            # Tasks of unrelated workflows share the session: a shared cookie jar
            # would send one task's cookies along with another task's requests.
            cookie_jar=aiohttp.DummyCookieJar(),
            # Each request has its own deadline (asyncio.timeout); the session
            # default (5 min total) must not cut a task that asked for longer.
            timeout=aiohttp.ClientTimeout(total=None),
        )
        _sessions[loop] = session
        return session


def _forget_closed_loops() -> None:
    # A session whose loop is closed cannot be closed any more; dropping it lets
    # aiohttp's own "Unclosed client session" warning point at the missing
    # close_sessions() call instead of leaking silently.
    for loop in [loop for loop in _sessions if loop.is_closed()]:
        del _sessions[loop]


async def close_sessions() -> None:
    """Close the shared session of the running loop (if any).

    Call it once per loop at shutdown, after the last ``http.request`` on that
    loop has finished. A later request simply opens a new session.
    """
    loop = asyncio.get_running_loop()
    with _sessions_lock:
        session = _sessions.pop(loop, None)
        _forget_closed_loops()
    if session is not None:
        await session.close()


# --- redaction ---------------------------------------------------------------


def _is_secret_name(name: str) -> bool:
    lowered = name.lower()
    return lowered in _SECRET_EXACT or any(part in lowered for part in _SECRET_PARTS)


def _safe_url(url: URL) -> str:
    """``url`` without userinfo, fragment or the values of secret-looking query keys."""
    safe = (url.with_user(None) if url.absolute else url).with_fragment(None)
    if url.query:
        safe = safe.with_query(
            [
                (key, _REDACTED if _is_secret_name(key) else value)
                for key, value in url.query.items()
            ]
        )
    return str(safe)


class _Redactor:
    """Knows the secrets of one request and removes them from text."""

    def __init__(self, url: URL, headers: Mapping[str, str]) -> None:
        found: set[str] = set()
        for value in (url.user, url.raw_user, url.password, url.raw_password):
            if value:
                found.add(value)
        for key, value in url.query.items():
            if _is_secret_name(key):
                found.add(value)
        for part in url.raw_query_string.split("&"):
            raw_key, _, raw_value = part.partition("=")
            if _is_secret_name(unquote(raw_key)):
                found.add(raw_value)
        for name, value in headers.items():
            if _is_secret_name(name):
                found.add(value)
                found.add(value.partition(" ")[2])  # the credentials after "Bearer "
        # Longest first, so a secret containing another is replaced whole.
        self._secrets = sorted(
            (secret for secret in found if len(secret) >= _MIN_SCRUB_LEN), key=len, reverse=True
        )

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, _REDACTED)
        return text


# --- input checks --------------------------------------------------------------


def _bad_input(message: str) -> NonRetryableError:
    return NonRetryableError(f"http.request: {message}")


def _parse_url(url: object) -> URL:
    if not isinstance(url, str) or not url:
        raise _bad_input(f"url must be a non-empty string, got {type(url).__name__}")
    try:
        parsed = URL(url)
    except ValueError as exc:
        raise _bad_input(f"url is not a valid URL ({type(exc).__name__})") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise _bad_input(
            f"url must be an absolute http:// or https:// URL, got {_safe_url(parsed)}"
        )
    return parsed


def _header_pairs(headers: object) -> dict[str, str]:
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise _bad_input(f"headers must be a mapping, got {type(headers).__name__}")
    out: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or isinstance(value, dict | list) or value is None:
            raise _bad_input(f"header {name!r} must have a string (or number) value")
        out[name] = _scalar_text(value)
    return out


def _query_pairs(params: object) -> list[tuple[str, str]]:
    if params is None:
        return []
    if not isinstance(params, Mapping):
        raise _bad_input(f"params must be a mapping, got {type(params).__name__}")
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        # A list repeats the key (?tag=a&tag=b); None leaves the key out.
        for item in value if isinstance(value, list) else [value]:
            if item is None:
                continue
            if not isinstance(key, str) or isinstance(item, dict | list):
                raise _bad_input(f"query parameter {key!r} must have scalar values")
            pairs.append((key, _scalar_text(item)))
    return pairs


def _scalar_text(value: object) -> str:
    # JSON spelling, not Python's: True -> "true".
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _positive_number(name: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise _bad_input(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


# --- the handler -------------------------------------------------------------


@handler("http.request")
async def request(
    ctx: TaskContext,
    *,
    url: str,
    method: str = "GET",
    headers: dict[str, str | int | float | bool] | None = None,
    params: dict[str, Any] | None = None,
    json: Any = None,
    body: str | None = None,
    timeout_s: PositiveSeconds = 30,
    expect_status: list[int] | None = None,
    max_response_bytes: ByteCount = DEFAULT_MAX_RESPONSE_BYTES,
) -> dict[str, Any]:
    """Make one HTTP request and return ``{"status", "headers", "json", "text"}``.

    ``json`` is sent as a JSON body, ``body`` as text; give at most one. A
    response status outside ``expect_status`` (default: any 2xx) fails the
    attempt: 4xx is non-retryable except 408 and 429; anything else, like
    connection errors and timeouts, is retryable. ``timeout_s`` covers the
    whole exchange including reading the body, which may be at most
    ``max_response_bytes`` (after decompression). Response headers come back
    with lower-case names; ``json`` holds the parsed body when the response is
    JSON, ``text`` the decoded body otherwise.
    """
    target = _parse_url(url)
    if not isinstance(method, str) or not _METHOD_RE.fullmatch(method):
        raise _bad_input(f"method must be an HTTP method name, got {method!r}")
    method = method.upper()
    request_headers = _header_pairs(headers)
    query = _query_pairs(params)
    timeout = _positive_number("timeout_s", timeout_s)
    if (
        isinstance(max_response_bytes, bool)
        or not isinstance(max_response_bytes, int)
        or max_response_bytes < 0
    ):
        raise _bad_input(f"max_response_bytes must be an integer >= 0, got {max_response_bytes!r}")
    if expect_status is not None and (
        not isinstance(expect_status, list)
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in expect_status)
    ):
        raise _bad_input(f"expect_status must be a list of integers, got {expect_status!r}")

    data: bytes | str | None = None
    if json is not None and body is not None:
        raise _bad_input("give either json or body, not both")
    if json is not None:
        try:
            data = orjson.dumps(json)
        except TypeError as exc:
            raise _bad_input(f"json is not JSON-serialisable: {exc}") from None
        if not any(name.lower() == "content-type" for name in request_headers):
            request_headers["Content-Type"] = "application/json"
    elif body is not None:
        if not isinstance(body, str):
            raise _bad_input(f"body must be a string, got {type(body).__name__}")
        data = body

    redactor = _Redactor(target, request_headers)
    safe_url = _safe_url(target)

    def failure(what: str, *, status: int | None, non_retryable: bool) -> HTTPRequestError:
        return HTTPRequestError(
            f"{method} {safe_url} {redactor.scrub(what)}",
            method=method,
            url=safe_url,
            status=status,
            non_retryable=non_retryable,
        )

    try:
        # One deadline for everything: waiting for a pooled connection,
        # connecting, sending, and reading the body.
        async with asyncio.timeout(timeout):
            async with _session().request(
                method,
                target,
                headers=request_headers,
                params=query or None,
                data=data,
            ) as response:
                status = response.status
                if not _expected(status, expect_status):
                    snippet = await _snippet(response)
                    response.close()
                    reason = f" {response.reason}" if response.reason else ""
                    retry_after = response.headers.get("Retry-After")
                    raise failure(
                        f"failed: HTTP {status}{reason}"
                        + (f" (Retry-After: {retry_after})" if retry_after else "")
                        + (f": {snippet}" if snippet else ""),
                        status=status,
                        non_retryable=400 <= status < 500 and status not in _RETRYABLE_4XX,
                    )
                raw = await _read_limited(response, max_response_bytes)
                if raw is None:
                    response.close()  # don't return a half-read connection to the pool
                    raise failure(
                        f"returned HTTP {status} with a body over max_response_bytes="
                        f"{max_response_bytes} bytes; raise the limit or fetch less",
                        status=status,
                        non_retryable=True,
                    )
                result = _result(response, raw)
                if isinstance(result, str):
                    raise failure(result, status=status, non_retryable=False)
                ctx.log.debug("%s %s -> HTTP %d", method, safe_url, status)
                return result
    except TimeoutError:
        raise failure(
            f"timed out after {timeout:g} s (timeout_s)", status=None, non_retryable=False
        ) from None
    except aiohttp.ClientError as exc:
        # Connection refused, DNS failure, reset, truncated body, too many
        # redirects...: all may pass, so all are retryable.
        raise failure(
            f"failed: {type(exc).__name__}: {exc}", status=None, non_retryable=False
        ) from None


def _expected(status: int, expect_status: list[int] | None) -> bool:
    return 200 <= status < 300 if expect_status is None else status in expect_status


async def _snippet(response: aiohttp.ClientResponse) -> str:
    """The start of an error body, for the message; never fails."""
    try:
        raw = await response.content.read(_SNIPPET_BYTES)
    except (aiohttp.ClientError, ValueError):
        return ""
    text = raw.decode(_charset(response), errors="replace")
    return " ".join(text.split())[:200]


async def _read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The whole body, or None as soon as it is known to exceed ``limit``."""
    if response.content_length is not None and response.content_length > limit:
        encoding = response.headers.get("Content-Encoding", "identity").lower()
        if encoding == "identity":  # compressed lengths say nothing about the result
            return None
    body = bytearray()
    async for chunk in response.content.iter_chunked(_READ_CHUNK):
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def _charset(response: aiohttp.ClientResponse) -> str:
    charset = response.charset or "utf-8"
    try:
        codecs.lookup(charset)
    except LookupError:
        return "utf-8"
    return charset


def _result(response: aiohttp.ClientResponse, raw: bytes) -> dict[str, Any] | str:
    """The handler's output, or an error description if a JSON body is broken."""
    out_headers: dict[str, str] = {}
    for name, value in response.headers.items():
        key = name.lower()
        # Repeated headers are combined as RFC 9110 allows.
        out_headers[key] = f"{out_headers[key]}, {value}" if key in out_headers else value
    content_type = response.content_type.lower()
    is_json = content_type == "application/json" or content_type.endswith("+json")
    parsed: Any = None
    text: str | None = None
    if not is_json:
        text = raw.decode(_charset(response), errors="replace")
    elif raw.strip():  # an empty JSON body (e.g. 204) gives json=None
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return f"returned HTTP {response.status} with invalid JSON ({exc})"
    return {"status": response.status, "headers": out_headers, "json": parsed, "text": text}
