"""Serving the aiohttp application with bounds a slow or greedy client cannot lift.

- **Request head**: aiohttp closes a connection that has not sent a complete
  request head within its keep-alive timeout of opening (or of the previous
  answer on it); that timeout is ``read_timeout_s``.
- **Request body**: :func:`body_deadline_middleware` fails any read of a body
  still incomplete ``read_timeout_s`` after its head, however the handler reads
  it; the client gets 408 and the connection is closed.
- **Connections**: at most ``max_connections`` are served at once. One more is
  answered 503 (``Retry-After``) and closed at once, so a flood of idle or
  slow sockets costs no more than that many file descriptors, and clients are
  served again as soon as the slow ones time out.

**Sharing the port** with other processes of the same orchestrator
(:mod:`orchestrator.http_processes`) binds with ``SO_REUSEPORT``. The first
process checks that nothing listens there yet: the option would otherwise let
it quietly split the port's connections with another program.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Literal

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from orchestrator.errors import ConfigError, OrchestratorError
from orchestrator.problems import PROBLEM_JSON, problem

log = logging.getLogger(__name__)


class RequestBodyTimeoutError(OrchestratorError, TimeoutError):
    """A request body did not arrive in time. A ``TimeoutError``, so that aiohttp,
    discarding the rest of the body after the answer, closes the connection quietly."""


def body_deadline_middleware(read_timeout_s: float) -> Middleware:
    @web.middleware
    async def body_deadline(request: web.Request, handler: Handler) -> web.StreamResponse:
        payload = request.content
        if payload.is_eof():  # no body, or all of it is here already
            return await handler(request)

        def expire() -> None:
            if not payload.is_eof():
                payload.set_exception(RequestBodyTimeoutError())

        timer = asyncio.get_running_loop().call_later(read_timeout_s, expire)
        try:
            return await handler(request)
        except RequestBodyTimeoutError:
            log.info(
                "%s %s from %s: body not received within %ss; closing",
                request.method,
                request.path,
                request.remote,
                read_timeout_s,
            )
            answer = problem(408, f"the request body did not arrive within {read_timeout_s} s")
            answer.force_close()
            return answer
        finally:
            timer.cancel()

    return body_deadline


def _refusal() -> bytes:
    body = orjson.dumps(
        {
            "type": "about:blank",
            "title": "Service Unavailable",
            "status": 503,
            "detail": "too many connections; retry later",
            "error": "too many connections; retry later",
        }
    )
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        f"Content-Type: {PROBLEM_JSON}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


_REFUSAL = _refusal()


class ConnectionLimit:
    """A protocol factory for ``loop.create_server`` that serves at most
    ``maximum`` connections with ``inner`` (aiohttp's server) at once."""

    def __init__(self, inner: Callable[[], asyncio.Protocol], maximum: int) -> None:
        self.inner = inner
        self.maximum = maximum
        self.open = 0
        """Connections being served now."""
        self.refused = 0
        """Connections turned away so far, for being over the limit."""
        self._refusing = False

    def __call__(self) -> asyncio.Protocol:
        return _Counted(self)

    def admit(self) -> asyncio.Protocol | None:
        if self.open >= self.maximum:
            self.refused += 1
            if not self._refusing:
                self._refusing = True
                log.warning(
                    "%d HTTP connections open, the most allowed "
                    "(ORCHESTRATOR_HTTP_MAX_CONNECTIONS): refusing new ones with 503",
                    self.maximum,
                )
            return None
        self.open += 1
        return self.inner()

    def release(self) -> None:
        self.open -= 1
        if self._refusing and self.open < self.maximum:
            self._refusing = False
            log.info("HTTP connections below the limit again: accepting new ones")


class _Counted(asyncio.Protocol):
    """Stands between the transport and aiohttp's protocol: admitted or refused
    when the connection is made, counted until it is lost."""

    __slots__ = ("_inner", "_limit")

    def __init__(self, limit: ConnectionLimit) -> None:
        self._limit = limit
        self._inner: asyncio.Protocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner = self._limit.admit()
        if self._inner is None:
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(_REFUSAL)
            transport.close()
            return
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is not None:
            self._limit.release()
            self._inner.connection_lost(exc)


#: ``no``: the port is this process's alone; ``first``: other processes will
#: join it (nothing may listen there yet); ``join``: serve it beside the first.
PortSharing = Literal["no", "first", "join"]


async def _refuse_if_served(host: str, port: int) -> None:
    """Raise :class:`OSError` (address in use) when something listens on
    ``host:port``, with ``SO_REUSEPORT`` or without."""
    loop = asyncio.get_running_loop()
    found = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    for family, kind, proto, _name, address in found:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)


class HttpServer:
    def __init__(
        self,
        app: web.Application,
        host: str,
        port: int,
        *,
        read_timeout_s: float = 10.0,
        max_connections: int = 1000,
        sharing: PortSharing = "no",
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.read_timeout_s = read_timeout_s
        self.max_connections = max_connections
        self.sharing = sharing
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self.connections: ConnectionLimit | None = None

    async def start(self) -> int:
        self._runner = web.AppRunner(
            self.app,
            access_log=None,
            # An idle connection, or one still sending its request head, is
            # closed after this long.
            keepalive_timeout=self.read_timeout_s,
            # How long the unread rest of a body is drained after an early answer.
            lingering_time=self.read_timeout_s,
        )
        await self._runner.setup()
        assert self._runner.server is not None
        self.connections = ConnectionLimit(self._runner.server, self.max_connections)
        try:
            if self.sharing == "first" and self.port != 0:
                await _refuse_if_served(self.host, self.port)
            self._listener = await asyncio.get_running_loop().create_server(
                self.connections,
                self.host,
                self.port,
                reuse_address=True,
                reuse_port=self.sharing != "no",
            )
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise ConfigError(
                f"cannot serve HTTP on {self.host}:{self.port}: {exc.strerror or exc} "
                "(set ORCHESTRATOR_HTTP_HOST / ORCHESTRATOR_HTTP_PORT, or stop what uses it)"
            ) from None
        if self.port == 0:  # a free port was asked for: learn which one
            for sock in self._listener.sockets:
                self.port = int(sock.getsockname()[1])
                break
        if self.sharing != "join":
            log.info("HTTP API on http://%s:%d", self.host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()  # take no new connections; the runner ends the open ones
            self._listener = None
        if self._runner is not None:
            await self._runner.cleanup()
