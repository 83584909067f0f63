"""Raw-SQL ceiling scenarios: ceiling, fanout_curve.

- ``ceiling``: the probes of bench/ceilings.py on their own: what this
  machine's PostgreSQL does with the rows of a fanout, a 40-task chain, an
  intake and a trigger, with no engine code.
- ``fanout_curve``: the fanout scenario at several sizes, each against its
  ceiling at that size; the engine's runs/s should not fall as the backlog
  grows (min / max across sizes).
"""

from __future__ import annotations

import argparse
from typing import Any

from bench.ceilings import (
    CLAIM_BATCH,
    CONNECTIONS,
    INTAKE_BATCH,
    chain_ceiling,
    fanout_ceiling,
    intake_ceiling,
    latency_ceiling,
)
from bench.engine_scenarios import fanout
from bench.harness import Figure
from bench.kafka_scenarios import PARTITIONS, _payload
from bench.registry import option, scenario

CURVE_SIZES = (1000, 5000, 20_000, 100_000)


def run_counts(text: str) -> tuple[int, ...]:
    """``1000,5000`` -> (1000, 5000)."""
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(
            f"expected run counts of at least 1 separated by commas, e.g. 1000,5000; got {text!r}"
        )
    return sizes


option(
    "--curve-sizes",
    type=run_counts,
    default=CURVE_SIZES,
    help="fanout_curve: run counts, comma-separated (default 1000,5000,20000,100000)",
)


@scenario(
    "ceiling",
    "raw SQL, no engine: fanout runs/s, chain40 s (two and one commits a step), "
    "intake events/s, trigger -> claim ms",
)
async def _ceiling(url: str, args: argparse.Namespace, _tx: float) -> list[Figure]:
    runs: int = args.runs
    events: int = args.events
    count: int = args.count
    same: dict[str, Any] = {"connections": CONNECTIONS, "claim_batch": CLAIM_BATCH}
    fanout_ctx = {**same, "runs": runs, "tasks_per_run": 3}
    runs_per_s = await fanout_ceiling(url, runs)
    chain = await chain_ceiling(url, tasks=40)
    chain_ctx = {"tasks": chain.tasks, "runs": chain.repeats, "connections": 1}
    events_per_s = await intake_ceiling(url, events, payload=_payload, partitions=PARTITIONS)
    intake_ctx = {"events": events, "batch": INTAKE_BATCH, "connections": CONNECTIONS}
    p50, p99 = await latency_ceiling(url, count=count)
    latency_ctx = {"runs": count, "rate_per_s": 10.0}
    return [
        Figure("ceiling", "fanout_runs_per_s", runs_per_s, "runs/s", context=fanout_ctx),
        Figure("ceiling", "chain40_two_commits_s", chain.two_commits_s, "s", context=chain_ctx),
        Figure("ceiling", "chain40_one_commit_s", chain.one_commit_s, "s", context=chain_ctx),
        Figure("ceiling", "intake_events_per_s", events_per_s, "events/s", context=intake_ctx),
        Figure("ceiling", "latency_p50_ms", p50, "ms", context=latency_ctx),
        Figure("ceiling", "latency_p99_ms", p99, "ms", context=latency_ctx),
    ]


@scenario(
    "fanout_curve",
    "fanout submitted at once at 1,000 / 5,000 / 20,000 / 100,000 runs (--curve-sizes): "
    "runs/s at each vs its ceiling, and min/max across sizes",
)
async def _fanout_curve(url: str, args: argparse.Namespace, _tx: float) -> list[Figure]:
    figures: list[Figure] = []
    rates: list[float] = []
    ceilings: list[float] = []
    for runs in args.curve_sizes:
        measured = (await fanout(url, runs=runs))[0]
        rates.append(measured.value)
        ceilings.append(measured.context["ceiling"])
        name = f"runs_per_s_{runs}"
        figures += [
            Figure("fanout_curve", name, measured.value, "runs/s", context=measured.context),
            Figure("fanout_curve", f"ceiling_{name}", ceilings[-1], "runs/s", "", {"runs": runs}),
        ]
    flatness: dict[str, Any] = {
        "sizes": list(args.curve_sizes),
        "runs_per_s": [round(r, 1) for r in rates],
        "ceiling_runs_per_s": ceilings,
        "ceiling_flatness": round(min(ceilings) / max(ceilings), 4),
    }
    figures.append(
        Figure(
            "fanout_curve",
            "flatness",
            min(rates) / max(rates),
            "min/max",
            ">= 0.85",
            context=flatness,
        )
    )
    return figures
