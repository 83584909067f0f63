"""Webhook intake scenario: signed deliveries over loopback HTTP -> durable 202s.

The orchestrator (webhook source, group commit, no worker: ``worker_slots=0``,
so intake is what is measured) runs in this process, with ``--webhook-processes``
processes serving its port as ``orchestrator run`` has (default: one per core;
this one and the others it starts); the load generator (``bench.webhook_load``)
runs as another process with 64 keep-alive connections, pre-signed Standard
Webhooks requests and unique delivery ids. Each 202 means an event row and a
1-task run were committed; afterwards the rows are counted to check that every
202 is in the database.

The CPU time each side used per 202 (the serving processes, the PostgreSQL
backends of the scratch database, the load generator) is recorded too, with
the rate the machine's cores could sustain at that cost: on a machine whose
cores all three share, that bounds the figure whatever the number of
processes, and it does not move with the load other programs put on them.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
from typing import Any

from bench.harness import Figure, cpu_seconds, scratch_database
from bench.registry import option, scenario
from bench.webhook_load import SECRET_ENV, run_generator
from handlers import builtin_registry
from orchestrator.app import Orchestrator
from orchestrator.http_processes import default_count
from orchestrator.settings import Settings, webhook_secret_variable
from orchestrator.spec import TaskSpec, WorkflowSpec
from orchestrator.store import database_name
from sources.models import WebhookTrigger
from sources.webhook import WebhookSource

HOOK = "bench_sales"

option(
    "--requests",
    type=int,
    default=20_000,
    help="webhook_intake: measured requests, at most (default 20000)",
)
option(
    "--webhook-seconds",
    type=float,
    default=20.0,
    help="webhook_intake: measured seconds, at most (default 20)",
)
option(
    "--webhook-connections",
    type=int,
    default=64,
    help="webhook_intake: load generator connections (default 64)",
)
option(
    "--webhook-processes",
    type=int,
    default=None,
    help="webhook_intake: processes serving the port (default: one per core)",
)
option(
    "--webhook-batch-delay",
    type=float,
    default=None,
    help="webhook_intake: group commit window in seconds (default: the setting, 0.002)",
)
option(
    "--webhook-max-batch",
    type=int,
    default=256,
    help="webhook_intake: most requests per commit in the first process; 1 = no group "
    "commit (default 256; the other processes take the default)",
)
option(
    "--webhook-flushers",
    type=int,
    default=3,
    help="webhook_intake: commits in flight at once in the first process (default 3; "
    "the other processes take the default)",
)

SPEC = WorkflowSpec(
    name="bench_hook",
    tasks=(TaskSpec(id="record", handler="noop"),),
    triggers=(
        WebhookTrigger(
            hook=HOOK,
            params={"order_id": "{{ payload.order.id }}", "amount": "{{ payload.order.amount }}"},
        ),
    ),
)


async def webhook_intake(url: str, args: argparse.Namespace) -> list[Figure]:
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    variable = webhook_secret_variable(HOOK)
    previous = os.environ.get(variable)
    os.environ[variable] = secret
    overrides: dict[str, Any] = {"http_port": 0, "worker_slots": 0, "db_pool_size": 8}
    if args.webhook_batch_delay is not None:
        overrides["intake_batch_delay_s"] = args.webhook_batch_delay
    settings = Settings(**overrides)
    source = WebhookSource(max_batch=args.webhook_max_batch, flushers=args.webhook_flushers)
    processes = args.webhook_processes or default_count()
    try:
        async with (
            scratch_database(url) as (db_url, db),
            Orchestrator(
                settings,
                db_url,
                registry=builtin_registry(),
                workflows=[SPEC],
                sources=[source],
                http=True,
                webhook_processes=processes,
            ) as orch,
        ):
            assert orch.http is not None
            serving = [os.getpid(), *(orch.http_processes.pids if orch.http_processes else [])]
            backends = "SELECT array_agg(pid) FROM pg_stat_activity WHERE datname = $1"
            database = database_name(db_url)
            async with db.pool.acquire() as conn:
                before = cpu_seconds(serving + await conn.fetchval(backends, database))
            result = await _load(orch.http.port, secret, args)
            async with db.pool.acquire() as conn:
                postgres = await conn.fetchval(backends, database)
                after = cpu_seconds(serving + postgres)
                stored_events = await conn.fetchval("SELECT count(*) FROM events")
                stored_runs = await conn.fetchval("SELECT count(*) FROM runs")
                # Group commits of every process: each inserted its events in
                # one transaction, whose id is the rows' xmin.
                batches = await conn.fetchval("SELECT count(DISTINCT xmin::text) FROM events")
    finally:
        if previous is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = previous
    accepted = result["accepted"] + result["warmup_accepted"]
    used = {pid: spent - before.get(pid, 0.0) for pid, spent in after.items()}
    cpu_ms = {
        "serving": sum(used.get(pid, 0.0) for pid in serving),
        "postgres": sum(used.get(pid, 0.0) for pid in postgres),
        "load_generator": result["cpu_s"] + result["warmup_cpu_s"],
    }
    cpu_ms = {k: round(v * 1000 / accepted, 3) if accepted else 0.0 for k, v in cpu_ms.items()}
    cores = os.cpu_count() or 1
    total_ms = sum(cpu_ms.values())
    if stored_events != accepted or stored_runs != accepted:
        raise AssertionError(
            f"{accepted} requests were answered 202 but {stored_events} events and "
            f"{stored_runs} runs are stored"
        )
    ctx: dict[str, Any] = {
        "requests_sent": result["sent"],
        "accepted": result["accepted"],
        "statuses": result["statuses"],
        "client_errors": result["errors"],
        "seconds": result["elapsed_s"],
        "connections": result["connections"],
        "p50_ms": round(result["p50_ms"], 2),
        "max_ms": round(result["max_ms"], 2),
        "batch_delay_s": settings.intake_batch_delay_s,
        "max_batch": args.webhook_max_batch,
        "flushers": args.webhook_flushers,
        "mean_batch": round(stored_events / batches, 1) if batches else 0,
        "processes": processes,
        "cpu_ms_per_202": cpu_ms,
        # The rate at which the machine's cores would all be busy at these costs.
        "cpu_bound_per_s": round(cores * 1000 / total_ms) if total_ms else 0,
        "stored_events": stored_events,
        "db_pool_size": settings.db_pool_size,
    }
    return [
        Figure("webhook_intake", "req_per_s", result["req_per_s"], "req/s", ">= 8000", ctx),
        Figure("webhook_intake", "p99_ms", result["p99_ms"], "ms", "<= 30", ctx),
    ]


async def _load(port: int, secret: str, args: argparse.Namespace) -> dict[str, Any]:
    return await run_generator(
        [
            "--port",
            str(port),
            "--hook",
            HOOK,
            "--requests",
            str(args.requests),
            "--seconds",
            str(args.webhook_seconds),
            "--connections",
            str(args.webhook_connections),
        ],
        {SECRET_ENV: secret},
    )


@scenario(
    "webhook_intake",
    "signed webhook deliveries from a second process, 64 connections: durable 202/s, p99",
)
async def _webhook_intake(url: str, args: argparse.Namespace, _tx: float) -> list[Figure]:
    return await webhook_intake(url, args)
