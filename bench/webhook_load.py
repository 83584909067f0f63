"""Load generator for the ``webhook_intake`` scenario, run as a second process.

``BENCH_WEBHOOK_SECRET=whsec_... python -m bench.webhook_load --port P --requests N``
(or ``BENCH_API_TOKEN=orch_... ... --api-workflow WF`` for authenticated manual
triggers, the ``api`` scenario)

Every request is a Standard Webhooks delivery with its own id, signed before
the clock starts, so the measurement is the server's, not the signing. A
minimal HTTP/1.1 keep-alive client on raw asyncio streams keeps the
generator's own CPU cost low (this machine's cores are shared with the server
and PostgreSQL). It stops after ``--requests`` or ``--seconds``, whichever
comes first, and prints one JSON object: counts per status, durable 202s per
second and latency percentiles of the 202s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from collections import Counter
from typing import Any

import orjson

from orchestrator.signatures import standard_headers

#: Where the parent hands over the hook's secret (not on the command line).
SECRET_ENV = "BENCH_WEBHOOK_SECRET"
#: Where the parent hands over an API token (the ``api`` scenario's triggers).
TOKEN_ENV = "BENCH_API_TOKEN"


def build_requests(
    *, host: str, port: int, hook: str, secret: str, count: int, tag: str
) -> list[bytes]:
    """``count`` complete HTTP requests, each a distinct, signed delivery."""
    now = int(time.time())
    out = []
    for i in range(count):
        body = orjson.dumps(
            {"type": "order.created", "order": {"id": f"{tag}-{i}", "amount": i % 1000 + 0.5}}
        )
        signed = standard_headers(secret, f"msg_{tag}_{i}", now, body)
        head = (
            f"POST /hooks/{hook} HTTP/1.1\r\n"
            f"Host: {host}:{port}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"webhook-id: {signed['webhook-id']}\r\n"
            f"webhook-timestamp: {signed['webhook-timestamp']}\r\n"
            f"webhook-signature: {signed['webhook-signature']}\r\n"
            "\r\n"
        )
        out.append(head.encode() + body)
    return out


def build_trigger_requests(
    *, host: str, port: int, workflow: str, token: str, count: int, tag: str
) -> list[bytes]:
    """``count`` authenticated manual triggers, each with its own idempotency key."""
    out = []
    for i in range(count):
        body = orjson.dumps({"params": {}, "idempotency_key": f"{tag}-{i}"})
        head = (
            f"POST /api/v1/workflows/{workflow}/runs HTTP/1.1\r\n"
            f"Host: {host}:{port}\r\n"
            "Content-Type: application/json\r\n"
            f"Authorization: Bearer {token}\r\n"
            f"Content-Length: {len(body)}\r\n"
            "\r\n"
        )
        out.append(head.encode() + body)
    return out


class Load:
    def __init__(self, requests: list[bytes], deadline: float, ok: int) -> None:
        self.ok = ok
        self.requests = requests
        self.deadline = deadline
        self.next = 0
        self.statuses: Counter[int] = Counter()
        self.latencies_ms: list[float] = []
        self.errors: Counter[str] = Counter()

    async def connection(self, host: str, port: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while self.next < len(self.requests) and time.perf_counter() < self.deadline:
                request = self.requests[self.next]
                self.next += 1
                started = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
                elapsed_ms = (time.perf_counter() - started) * 1000
                self.statuses[status] += 1
                if status == self.ok:
                    self.latencies_ms.append(elapsed_ms)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            self.errors[type(exc).__name__] += 1
        finally:
            writer.close()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


async def run(
    *, host: str, port: int, requests: list[bytes], connections: int, seconds: float, ok: int
) -> dict[str, Any]:
    load = Load(requests, time.perf_counter() + seconds, ok)
    started = time.perf_counter()
    cpu = time.process_time()
    await asyncio.gather(*(load.connection(host, port) for _ in range(connections)))
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    accepted = load.statuses.get(ok, 0)
    lat = load.latencies_ms
    return {
        "sent": load.next,
        "statuses": {str(k): v for k, v in sorted(load.statuses.items())},
        "errors": dict(load.errors),
        "accepted": accepted,
        "elapsed_s": round(elapsed, 3),
        "req_per_s": accepted / elapsed if elapsed else 0.0,
        "p50_ms": _percentile(lat, 0.50),
        "p99_ms": _percentile(lat, 0.99),
        "max_ms": max(lat) if lat else float("nan"),
        "connections": connections,
        "cpu_s": round(cpu, 3),
    }


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.webhook_load", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--hook", default="sales")
    p.add_argument(
        "--secret",
        default=os.environ.get(SECRET_ENV),
        help=f"the hook's whsec_ secret (default: ${SECRET_ENV})",
    )
    p.add_argument("--requests", type=int, default=20_000, help="measured requests (at most)")
    p.add_argument("--seconds", type=float, default=20.0, help="measured time (at most)")
    p.add_argument("--warmup", type=int, default=1000, help="requests sent first, not measured")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument(
        "--api-workflow",
        default=None,
        help=f"send authenticated manual triggers of this workflow instead (token: ${TOKEN_ENV})",
    )
    args = p.parse_args(argv)
    if args.api_workflow:
        args.token = os.environ.get(TOKEN_ENV)
        if not args.token:
            p.error(f"set {TOKEN_ENV} for --api-workflow")
    elif not args.secret:
        p.error(f"give --secret or set {SECRET_ENV}")
    return args


async def main(args: argparse.Namespace) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    if args.api_workflow:
        api = {"host": args.host, "port": args.port, "workflow": args.api_workflow}
        warm = build_trigger_requests(**api, token=args.token, count=args.warmup, tag=f"w{tag}")
        measured = build_trigger_requests(
            **api, token=args.token, count=args.requests, tag=f"m{tag}"
        )
        ok = 201
    else:
        common = {"host": args.host, "port": args.port, "hook": args.hook, "secret": args.secret}
        warm = build_requests(**common, count=args.warmup, tag=f"w{tag}")
        measured = build_requests(**common, count=args.requests, tag=f"m{tag}")
        ok = 202
    warmup: dict[str, Any] = {}
    if warm:
        warmup = await run(
            host=args.host,
            port=args.port,
            requests=warm,
            connections=args.connections,
            seconds=args.seconds,
            ok=ok,
        )
    result = await run(
        host=args.host,
        port=args.port,
        requests=measured,
        connections=args.connections,
        seconds=args.seconds,
        ok=ok,
    )
    result["warmup_accepted"] = warmup.get("accepted", 0)
    result["warmup_cpu_s"] = warmup.get("cpu_s", 0.0)
    result["warmup_statuses"] = warmup.get("statuses", {})
    return result


def cli(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(main(args))
    else:
        result = uvloop.run(main(args))
    print(json.dumps(result), flush=True)
    return 0


async def run_generator(args: list[str], secrets: dict[str, str]) -> dict[str, Any]:
    """Run this module as a second process with ``args``; ``secrets`` go in its
    environment (not on the command line, where ``ps`` shows them)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.webhook_load",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **secrets},
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode}): {err.decode()[-2000:]}")
    result: dict[str, Any] = orjson.loads(out.splitlines()[-1])
    return result


if __name__ == "__main__":
    sys.exit(cli())
