"""Watchers for the ``ui_live`` scenario, run as a second process so their
reading is not counted against the engine's.

``python -m bench.ui_watchers --port P --run RUN --clients 50 [--measure 5]``

Opens ``--clients`` streams of ``GET /api/v1/live?run=RUN``, prints ``ready``
once each has its first picture, then reads until every stream has seen the
run end, and prints one JSON object: per transition received by the first
``--measure`` clients, the delay from its row's time (taken in the committing
transaction, so a little before the commit: the figure is an upper bound) to
the arrival of the message carrying it, as percentiles.

Each stream is a plain :class:`asyncio.Protocol` speaking HTTP/1.1 itself: it
follows the chunked body's framing (one chunk per event, as the server sends
them), so it receives and counts every byte without scanning the bodies. Of
each event it looks at the head only (``full`` and the run's state come
first); the measured clients keep their events whole and parse them once the
run has ended (their arrival times are taken as they arrive). A browser's
parsing happens on its own machine: this process only stands in for the
browsers, on the engine's machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from datetime import datetime
from typing import cast

import orjson

ENDED = (b'"state":"success"', b'"state":"failed"', b'"state":"cancelled"')
#: The bytes of an event's head looked at: its event name, ``full`` and the run.
HEAD = 512


class Stream(asyncio.Protocol):
    """One ``GET`` of the live stream, read until the watched run ends."""

    def __init__(self, request: bytes, ready: asyncio.Event, keep: bool) -> None:
        self.request = request
        self.ready = ready
        self.keep = keep
        """Keep each event whole, with its arrival time (the measured clients)."""
        self.kept: list[tuple[float, bytes]] = []
        self.done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.received = 0
        """Events (``event: ...`` with data) received."""
        self.bytes = 0
        self._pending = b""
        """Bytes of the headers, a chunk-size line or a chunk's CRLF not complete yet."""
        self._left = -1
        """Bytes of the current chunk still to come; -1: the headers, -2: a size
        line, -3: the CRLF after a chunk."""
        self._head = b""
        self._parts: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(
                exc or ConnectionError("the stream closed before the run ended")
            )

    def data_received(self, data: bytes) -> None:
        self.bytes += len(data)
        at, size = 0, len(data)
        while at < size and not self.done.done():
            left = self._left
            if left > 0:  # the body of a chunk: taken, not scanned
                take = min(left, size - at)
                if len(self._head) < HEAD:
                    self._head += data[at : at + min(take, HEAD - len(self._head))]
                if self.keep:
                    self._parts.append(data[at : at + take])
                at += take
                self._left = left - take
                if self._left == 0:
                    self._event(time.time())
                    self._left = -3
                continue
            mark = b"\r\n\r\n" if left == -1 else b"\r\n"
            piece = data[at : at + 4096]
            line = self._pending + piece
            end = line.find(mark)
            if end < 0:
                if len(line) > 65536:
                    raise ValueError("no end of line in 64 KiB")
                self._pending = line
                at += len(piece)
                continue
            at += end + len(mark) - len(self._pending)
            self._pending = b""
            if left == -1:
                if not line.startswith(b"HTTP/1.1 200") or b"chunked" not in line[:end].lower():
                    raise ValueError(f"unexpected response: {line[:end]!r}")
                self._left = -2
            elif left == -3:
                if end:
                    raise ValueError("a chunk not followed by CRLF")
                self._left = -2
            else:
                self._left = int(line[:end], 16)
                if self._left == 0:
                    raise ValueError("the stream ended before the run")

    def _event(self, now: float) -> None:
        head, self._head = self._head, b""
        if self.keep:
            body, self._parts = b"".join(self._parts), []
        if not head.startswith(b"event: "):
            return  # the retry line or a keepalive comment
        self.received += 1
        if head.startswith(b'event: run\ndata: {"full":true'):
            self.ready.set()
        elif self.keep:
            self.kept.append((now, body))
        run = head[: head.find(b',"tasks"')]
        if any(state in run for state in ENDED):
            self.done.set_result(self.received)
            assert self.transport is not None
            self.transport.close()


def delays_of(streams: list[Stream]) -> list[float]:
    """Each kept event's transitions, timed from their row's time to the
    event's arrival (each distinct event parsed once)."""
    parsed: dict[bytes, list[float]] = {}
    delays: list[float] = []
    for stream in streams:
        for now, body in stream.kept:
            epochs = parsed.get(body)
            if epochs is None:
                message = orjson.loads(body[body.index(b"\ndata: ") + 7 :])
                epochs = parsed[body] = [_epoch(s["at"]) for s in message["transitions"]]
            delays.extend(now - e for e in epochs)
    return delays


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


async def main(args: argparse.Namespace) -> None:
    request = (
        f"GET /api/v1/live?run={args.run} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{args.port}\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    readies = [asyncio.Event() for _ in range(args.clients)]
    streams: list[Stream] = []
    for n, ready in enumerate(readies):
        stream = Stream(request, ready, keep=n < args.measure)
        await loop.create_connection(lambda s=stream: s, "127.0.0.1", args.port)  # type: ignore[misc]
        streams.append(stream)
    async with asyncio.timeout(args.timeout):
        await asyncio.gather(*(r.wait() for r in readies))
        print("ready", flush=True)
        cpu_at_ready = time.process_time()
        counts = await asyncio.gather(*(s.done for s in streams))
    cpu_s = time.process_time() - cpu_at_ready
    delays = delays_of(streams)
    print(
        json.dumps(
            {
                "clients": args.clients,
                "measured_clients": min(args.measure, args.clients),
                "messages_per_client_min": min(counts),
                "bytes_per_client_min": min(s.bytes for s in streams),
                "transitions_timed": len(delays),
                "p50_ms": percentile(delays, 0.5) * 1000,
                "p99_ms": percentile(delays, 0.99) * 1000,
                "max_ms": max(delays, default=float("nan")) * 1000,
                "cpu_s": cpu_s,
                "parse_cpu_s": time.process_time() - cpu_at_ready - cpu_s,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    with contextlib.suppress(ImportError):  # as the bench itself runs
        import uvloop

        uvloop.install()
    p = argparse.ArgumentParser(prog="python -m bench.ui_watchers", description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--run", type=int, required=True)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--measure", type=int, default=5, help="clients that time each transition")
    p.add_argument("--timeout", type=float, default=600)
    asyncio.run(main(p.parse_args()))
