"""Watchers for the ``ui_live`` scenario, run as a second process so their
parsing is not counted against the engine's.

``python -m bench.ui_watchers --port P --run RUN --clients 50 [--measure 5]``

Opens ``--clients`` streams of ``GET /api/v1/live?run=RUN``, prints ``ready``
once each has its first picture, then reads until every stream has seen the
run end, and prints one JSON object: per transition received by the first
``--measure`` clients (the rest read every byte but parse nothing), the delay from
its row's time (taken in the committing transaction, so a little before the
commit: the figure is an upper bound) to its arrival, as percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from datetime import datetime
from typing import Any

import aiohttp
import orjson

ENDED = {"success", "failed", "cancelled"}


async def watch(
    http: aiohttp.ClientSession,
    url: str,
    ready: asyncio.Event,
    delays: list[float] | None,
) -> int:
    """Read one stream until the run ends; with ``delays``, time every
    transition in it (the others only look for the end: a browser's parsing
    happens in its own process, not in this one). Events are found in place,
    without copying: this process shares the machine with the engine."""
    received = 0
    async with http.get(url) as resp:
        buffer = bytearray()
        async for chunk in resp.content.iter_any():
            now = time.time()
            buffer += chunk
            start = 0
            while (end := buffer.find(b"\n\n", start)) >= 0:
                data = buffer.find(b"\ndata: ", start, end)
                start, begin = end + 2, data + 7
                if data < 0:
                    continue  # a comment or the retry line
                received += 1
                head = buffer[begin : buffer.find(b',"tasks"', begin, end)]
                if buffer.find(b'"full":true', end - 20, end) >= 0:
                    ready.set()
                elif delays is not None:
                    message: dict[str, Any] = orjson.loads(buffer[begin:end])
                    delays.extend(now - _epoch(s["at"]) for s in message["transitions"])
                if any(b'"state":"%s"' % state.encode() in head for state in ENDED):
                    return received
            del buffer[:start]
    return received


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
    url = f"http://127.0.0.1:{args.port}/api/v1/live?run={args.run}"
    delays: list[float] = []
    readies = [asyncio.Event() for _ in range(args.clients)]
    connector = aiohttp.TCPConnector(limit=args.clients + 4)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=args.timeout)
    ) as http:
        tasks = [
            asyncio.create_task(watch(http, url, r, delays if n < args.measure else None))
            for n, r in enumerate(readies)
        ]
        await asyncio.gather(*(r.wait() for r in readies))
        print("ready", flush=True)
        cpu_at_ready = time.process_time()
        counts = await asyncio.gather(*tasks)
        cpu_s = time.process_time() - cpu_at_ready
    print(
        json.dumps(
            {
                "clients": args.clients,
                "measured_clients": min(args.measure, args.clients),
                "messages_per_client_min": min(counts),
                "transitions_timed": len(delays),
                "p50_ms": percentile(delays, 0.5) * 1000,
                "p99_ms": percentile(delays, 0.99) * 1000,
                "max_ms": max(delays, default=float("nan")) * 1000,
                "cpu_s": cpu_s,
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
