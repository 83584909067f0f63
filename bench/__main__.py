"""python -m bench [SCENARIO ...] — run benchmarks, print a table, append results."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench import engine_scenarios
from bench.harness import RESULTS_DIR, Figure, record, server_url, table

SCENARIOS: dict[str, str] = {
    "baseline": "single-row UPDATE transactions/s, asyncpg, 8 connections (the yardstick)",
    "chain40": "one run of 40 sequential noop tasks, trigger -> success (median)",
    "fanout": "1,000 runs of a 3-task chain submitted at once: runs/s completed",
    "latency": "200 single-task runs at ~10/s: trigger -> handler start p50/p99",
}


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure the orchestrator against the raw PostgreSQL baseline of the same "
        "machine, print a table and append one JSON line per figure to the results file. "
        "Database: ORCHESTRATOR_DATABASE_URL (a scratch database is created and dropped on "
        "that server), else an embedded PostgreSQL.",
        epilog="scenarios:\n" + "\n".join(f"  {k:10} {v}" for k, v in SCENARIOS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "scenarios",
        nargs="*",
        metavar="SCENARIO",
        help="which to run (default: all); baseline always runs first",
    )
    p.add_argument(
        "--results",
        type=Path,
        default=RESULTS_DIR / "engine.jsonl",
        help="JSON-lines file to append to (default: %(default)s)",
    )
    p.add_argument("--runs", type=int, default=1000, help="fanout: runs submitted (default 1000)")
    p.add_argument("--count", type=int, default=200, help="latency: runs triggered (default 200)")
    p.add_argument("--no-record", action="store_true", help="print only, write no results")
    args = p.parse_args(argv)
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s): {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    return args


async def main(args: argparse.Namespace) -> list[Figure]:
    chosen = args.scenarios or list(SCENARIOS)
    url, server = server_url()
    figures: list[Figure] = []
    try:
        base = await engine_scenarios.baseline(url)
        figures += base
        tx = base[0].value
        runners: dict[str, Callable[[], Awaitable[list[Figure]]]] = {
            "chain40": lambda: engine_scenarios.chain40(url),
            "fanout": lambda: engine_scenarios.fanout(url, runs=args.runs, baseline_tx=tx),
            "latency": lambda: engine_scenarios.latency(url, count=args.count),
        }
        for name in chosen:
            if name == "baseline":
                continue
            print(f"running {name} ...", file=sys.stderr, flush=True)
            got = await runners[name]()
            for f in got:
                f.context.setdefault("baseline_tx_per_s", round(tx, 1))
            figures += got
    finally:
        if server is not None:
            server.stop()
    return figures


def run(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    figures = asyncio.run(main(args))
    print(table(figures))
    if not args.no_record:
        record(figures, args.results)
        print(f"\nappended {len(figures)} figures to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(run())
