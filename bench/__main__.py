"""python -m bench [SCENARIO ...] — run benchmarks, print a table, append results."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from pathlib import Path

from bench.engine_scenarios import baseline
from bench.harness import RESULTS_DIR, Figure, record, server_url, table
from bench.registry import OPTIONS, SCENARIOS
from orchestrator.gc_tuning import tune_gc

#: Every module whose import registers scenarios.
SCENARIO_MODULES = (
    "engine_scenarios",
    "kafka_scenarios",
    "webhook_scenarios",
    "file_scenarios",
    "wait_scenarios",
    "api_scenarios",
    "operation_scenarios",
    "pause_scenarios",
    "ui_scenarios",
    "alert_scenarios",
    "lineage_scenarios",
    "outbox_scenarios",
    "step_scenarios",
    "ceiling_scenarios",
)


def _load_scenarios() -> None:
    for name in SCENARIO_MODULES:
        try:
            importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"bench.{name}":
                raise


def parse(argv: list[str]) -> argparse.Namespace:
    _load_scenarios()
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure the orchestrator against the raw PostgreSQL baseline of the same "
        "machine, print a table and append one JSON line per figure to the results file. "
        "Database: ORCHESTRATOR_DATABASE_URL (a scratch database is created and dropped on "
        "that server), else an embedded PostgreSQL.",
        epilog="scenarios:\n"
        + "  baseline   single-row UPDATE transactions/s, asyncpg, 8 connections (always runs "
        + "first; named alone, only it runs)\n"
        + "\n".join(f"  {s.name:14} {s.description}" for s in SCENARIOS.values()),
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
        default=None,
        help="JSON-lines file to append to (default: bench/results/<scenario>.jsonl)",
    )
    p.add_argument("--no-record", action="store_true", help="print only, write no results")
    for flags, kwargs in OPTIONS:
        p.add_argument(*flags, **kwargs)  # type: ignore[arg-type]
    args = p.parse_args(argv)
    unknown = [s for s in args.scenarios if s != "baseline" and s not in SCENARIOS]
    if unknown:
        p.error(
            f"unknown scenario(s): {', '.join(unknown)}; choose from "
            f"{', '.join(['baseline', *SCENARIOS])}"
        )
    return args


async def main(args: argparse.Namespace) -> list[Figure]:
    # No scenario named: all of them; "baseline" alone: only the baseline.
    chosen = [s for s in args.scenarios if s != "baseline"] if args.scenarios else list(SCENARIOS)
    url, server = server_url()
    figures: list[Figure] = []
    try:
        base = await baseline(url)
        figures += base
        tx = base[0].value
        for name in chosen:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            got = await SCENARIOS[name].run(url, args, tx)
            for f in got:
                f.context.setdefault("baseline_tx_per_s", round(tx, 1))
            figures += got
    finally:
        if server is not None:
            server.stop()
    return figures


def _record(figures: list[Figure], explicit: Path | None) -> None:
    if explicit is not None:
        record(figures, explicit)
        print(f"\nappended {len(figures)} figures to {explicit}")
        return
    baseline_rows = [f for f in figures if f.scenario == "baseline"]
    by_scenario: dict[str, list[Figure]] = {}
    for f in figures:
        if f.scenario != "baseline":
            by_scenario.setdefault(f.scenario, []).append(f)
    for name, rows in by_scenario.items():
        # Each file carries the baseline it was measured against.
        path = RESULTS_DIR / f"{name}.jsonl"
        record(baseline_rows + rows, path)
        print(f"appended {len(rows) + len(baseline_rows)} figures to {path}")


def run(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    tune_gc()  # as an orchestrator process does
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    figures = asyncio.run(main(args))
    print(table(figures))
    if not args.no_record:
        _record(figures, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(run())
