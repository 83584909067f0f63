"""Lineage scenario: queries of the lineage graph of 10,000 datasets.

5,000 workflows are registered: workflow ``i`` writes datasets ``2i`` and
``2i+1`` and reads one dataset of workflow ``(i-1)//2`` (a tree of
producers and consumers, as deep as a warehouse's), so 10,000 datasets and
5,000 workflows. Every dataset has a recorded last update (written straight
into ``datasets``: the history is not the subject). Then ``GET
/api/v1/lineage`` is timed one request at a time over HTTP: the whole
upstream of a random dataset, the downstream of a random workflow 4 steps
deep, and both directions 2 steps around a random dataset.
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any
from urllib.parse import quote

import aiohttp

from bench.harness import Figure, percentile, scratch_database
from bench.registry import option, scenario
from handlers import builtin_registry
from orchestrator.app import Orchestrator
from orchestrator.dataset_refs import DatasetRef
from orchestrator.dataset_triggers import DatasetTrigger
from orchestrator.settings import Settings
from orchestrator.spec import TaskSpec, WorkflowSpec

option("--lineage-datasets", type=int, default=10_000, help="lineage: datasets (default 10000)")
option("--lineage-requests", type=int, default=300, help="lineage: timed requests per kind")

UPDATES_SQL = """
INSERT INTO datasets (uri, last_event_id, last_updated_at, updates)
SELECT 's3://lake/ds' || g, g, now() - make_interval(secs => g), 1
FROM generate_series(0, $1 - 1) AS g
"""


def _uri(n: int) -> str:
    return f"s3://lake/ds{n}"


def specs(datasets: int) -> list[WorkflowSpec]:
    out = []
    for i in range(datasets // 2):
        parent = (i - 1) // 2
        inlets = (DatasetRef(uri=_uri(2 * parent + i % 2)),) if i else ()
        out.append(
            WorkflowSpec(
                name=f"w{i}",
                tasks=(
                    TaskSpec(
                        id="load",
                        handler="noop",
                        inlets=inlets,
                        outlets=(
                            DatasetRef(uri=_uri(2 * i), fresh_within="26h"),
                            DatasetRef(uri=_uri(2 * i + 1)),
                        ),
                    ),
                ),
                triggers=(
                    (DatasetTrigger.model_validate({"source": "dataset", "any": [inlets[0].uri]}),)
                    if inlets
                    else ()
                ),
            )
        )
    return out


async def _timed(http: aiohttp.ClientSession, urls: list[str]) -> tuple[list[float], int]:
    times, nodes = [], 0
    for url in urls:
        started = time.perf_counter()
        async with http.get(url) as resp:
            body = await resp.json()
            if resp.status != 200:
                raise AssertionError(f"{url}: {resp.status} {body}")
        times.append((time.perf_counter() - started) * 1000)
        nodes = max(nodes, len(body["nodes"]))
    return times, nodes


async def lineage(url: str, args: argparse.Namespace) -> list[Figure]:
    settings = Settings(http_port=0, worker_slots=0, db_pool_size=8, roles="api")
    count = args.lineage_datasets
    workflows = specs(count)
    rng = random.Random(7)
    async with (
        scratch_database(url) as (db_url, db),
        Orchestrator(settings, db_url, registry=builtin_registry(), http=True) as orch,
    ):
        assert orch.http is not None
        started = time.perf_counter()
        await orch.register(workflows)
        async with db.pool.acquire() as conn:
            await conn.execute(UPDATES_SQL, count)
        setup_s = time.perf_counter() - started
        base = f"http://127.0.0.1:{orch.http.port}/api/v1/lineage?node="
        n = args.lineage_requests
        kinds = {
            "upstream of a dataset": [
                f"{base}{quote(_uri(rng.randrange(count)), safe='')}&direction=upstream"
                for _ in range(n)
            ],
            "downstream of a workflow, depth 4": [
                f"{base}w{rng.randrange(count // 2)}&direction=downstream&depth=4" for _ in range(n)
            ],
            "around a dataset, depth 2": [
                f"{base}{quote(_uri(rng.randrange(count)), safe='')}&depth=2" for _ in range(n)
            ],
        }
        latencies: dict[str, list[float]] = {}
        largest: dict[str, int] = {}
        async with aiohttp.ClientSession() as http:
            first_started = time.perf_counter()
            await _timed(http, [f"{base}w0&depth=1"])  # builds the graph once
            first_ms = (time.perf_counter() - first_started) * 1000
            await _timed(http, kinds["around a dataset, depth 2"][:20])  # warm the caches
            for kind, urls in kinds.items():
                latencies[kind], largest[kind] = await _timed(http, urls)
    every = [t for times in latencies.values() for t in times]
    ctx: dict[str, Any] = {
        "datasets": count,
        "workflows": len(workflows),
        "setup_s": round(setup_s, 1),
        "first_query_ms (builds the graph)": round(first_ms, 1),
        **{
            f"{kind} p50/p99 ms, most nodes": [
                round(percentile(times, 0.5), 2),
                round(percentile(times, 0.99), 2),
                largest[kind],
            ]
            for kind, times in latencies.items()
        },
    }
    return [Figure("lineage", "query_p99_ms", percentile(every, 0.99), "ms", "<= 50", ctx)]


@scenario("lineage", "GET /api/v1/lineage on a 10,000-dataset graph (p99 over HTTP)")
async def _lineage(url: str, args: argparse.Namespace, _tx: float) -> list[Figure]:
    return await lineage(url, args)
