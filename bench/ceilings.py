"""Raw-SQL ceilings: what this machine's PostgreSQL does with the engine's rows.

Each probe writes, into a scratch database migrated like the engine's (the
same tables, indexes, defaults and rules), exactly the rows the engine writes
for the same work, with the leanest SQL (bench/ceiling_sql.py) over the same
number of connections and no engine code: prepared statements, one statement
and one commit per batch, ``synchronous_commit`` on. An engine figure divided
by its ceiling, measured in the same run, says how much of the machine the
engine keeps, however noisy the machine is that day.

Each probe checks afterwards that it wrote the rows it should have.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from bench import ceiling_sql as sql
from bench.harness import median, percentile, scratch_database

#: The engine scenarios' pool size and claim batch (bench_settings uses these):
#: a ceiling gets the same connections and batches as the engine it bounds.
CONNECTIONS = 8
CLAIM_BATCH = 128
#: How many events one intake statement stores (the default kafka_batch_max).
INTAKE_BATCH = 1000
LEASE_S = 60.0
OWNER = "ceiling"
ACTOR = "bench"
HANDLER = "noop"


def chain_transitions(tasks: int) -> int:
    """Transition rows per run of a chain: the run created and ended; each task
    created, claimed and succeeded; each task but the first queued."""
    return 2 + 3 * tasks + (tasks - 1)


def chain_ids(tasks: int) -> list[str]:
    """Task ids of a chain, as bench.engine_scenarios.chain names them."""
    return [f"t{i:02d}" for i in range(tasks)]


def against(value: float, ceiling: float, *, lower_is_better: bool = False) -> dict[str, float]:
    """Figure context: the ceiling and the share of it ``value`` reaches (1.0:
    as fast as the raw SQL; for times, ceiling / value)."""
    ratio = ceiling / value if lower_is_better else value / ceiling
    return {"ceiling": round(ceiling, 4), "ratio_to_ceiling": round(ratio, 4)}


async def _register(conn: asyncpg.Connection, workflow: str, version: str) -> None:
    """The version row runs reference (a foreign key), as the engine stores it."""
    await conn.execute(
        "INSERT INTO workflow_versions (version, workflow, spec) VALUES ($1, $2, '{}')",
        version,
        workflow,
    )
    await conn.execute(
        "INSERT INTO workflows (name, current_version) VALUES ($1, $2)", workflow, version
    )


async def _expect_rows(conn: asyncpg.Connection, probe: str, expected: dict[str, int]) -> None:
    for table, count in expected.items():
        found = await conn.fetchval(f"SELECT count(*) FROM {table}")
        if found != count:
            raise AssertionError(f"{probe} ceiling: {table}: {found} rows, expected {count}")


# -- fanout ----------------------------------------------------------------------------


class _FanoutWorker:
    """One connection's loop, what the engine's worker does minus the handler:
    claim a batch, then complete it step by step, each commit leasing the
    completed tasks' successors to this same worker, until its runs ended."""

    def __init__(self, conn: asyncpg.Connection, chain: list[str]) -> None:
        self.conn = conn
        self.chain = chain
        self.finished = 0
        self.deadlocks = 0

    async def prepare(self) -> None:
        self.claim = await self.conn.prepare(sql.CLAIM)
        self.step = await self.conn.prepare(sql.COMPLETE_AND_RUN_SUCCESSOR)

    async def drain(self) -> None:
        """Until a claim finds nothing: every run was created before the
        workers started, and a successor is never queued for another worker,
        so nothing can become claimable later."""
        self.finished = self.deadlocks = 0
        ids: list[int] = []
        attempts: list[int] = []
        while True:
            try:
                if ids:
                    row = await self.step.fetchrow(ids, attempts, OWNER, self.chain, LEASE_S)
                else:
                    row = await self.claim.fetchrow(OWNER, CLAIM_BATCH, LEASE_S)
            except asyncpg.DeadlockDetectedError:
                # Nothing was written: try the same statement again. (A claim
                # keeps the lock of a row leased and committed since its
                # snapshot, which the worker completing that row then waits for.)
                self.deadlocks += 1
                continue
            if not (ids or row["ids"]):
                return
            self.finished += row["finished"]
            ids, attempts = row["ids"], row["attempts"]


async def _fanout_once(
    conns: Sequence[asyncpg.Connection], workers: Sequence[_FanoutWorker], runs: int
) -> float:
    """Seconds from creating ``runs`` runs (one commit) until all ended."""
    chain = workers[0].chain
    started = time.perf_counter()
    await conns[0].fetchval(sql.CREATE_RUNS, "fanout3", "ceiling", runs, chain, ACTOR, HANDLER)
    await asyncio.gather(*(w.drain() for w in workers))
    elapsed = time.perf_counter() - started
    finished = sum(w.finished for w in workers)
    if finished != runs:
        raise AssertionError(f"fanout ceiling: {finished} of {runs} runs ended")
    deadlocks = sum(w.deadlocks for w in workers)
    if deadlocks:
        print(
            f"fanout ceiling: {deadlocks} deadlock(s) retried, each after deadlock_timeout",
            file=sys.stderr,
        )
    return elapsed


async def fanout_ceiling(url: str, runs: int, *, tasks: int = 3, warmup: int = 64) -> float:
    """Runs/s: ``runs`` runs of a ``tasks``-task chain created in one commit,
    then claimed in batches of CLAIM_BATCH (FOR UPDATE SKIP LOCKED) over
    CONNECTIONS connections, each batch completed one commit per step (the
    commit that completes a task leases its successor to the same worker)."""
    chain = chain_ids(tasks)
    async with scratch_database(url) as (db_url, _db):
        conns = [await asyncpg.connect(db_url) for _ in range(CONNECTIONS)]
        try:
            await _register(conns[0], "fanout3", "ceiling")
            workers = [_FanoutWorker(c, chain) for c in conns]
            for w in workers:
                await w.prepare()
            await _fanout_once(conns, workers, warmup)
            elapsed = await _fanout_once(conns, workers, runs)
            total = runs + warmup
            await _expect_rows(
                conns[0],
                "fanout",
                {
                    "runs WHERE state = 'success'": total,
                    "task_instances WHERE state = 'success'": total * tasks,
                    "transitions": total * chain_transitions(tasks),
                },
            )
        finally:
            for c in conns:
                await c.close()
    return runs / elapsed


# -- chain40 ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ChainCeiling:
    """Median seconds from creating one run of a chain to its end, one worker."""

    two_commits_s: float
    """Each step: complete and queue the successor (a commit), then claim it (a commit)."""
    one_commit_s: float
    """Each step: complete and lease the successor to the same worker (one commit)."""
    tasks: int
    repeats: int


async def _chain_once(conn: asyncpg.Connection, chain: list[str], *, one_commit: bool) -> float:
    started = time.perf_counter()
    await conn.fetchval(sql.CREATE_RUNS, "chain", "ceiling", 1, chain, ACTOR, HANDLER)
    row = await conn.fetchrow(sql.CLAIM, OWNER, CLAIM_BATCH, LEASE_S)
    for _ in chain:
        if one_commit:
            row = await conn.fetchrow(
                sql.COMPLETE_AND_RUN_SUCCESSOR, row["ids"], row["attempts"], OWNER, chain, LEASE_S
            )
        else:
            row = await conn.fetchrow(sql.COMPLETE, row["ids"], row["attempts"], OWNER, chain)
            if not row["finished"]:
                row = await conn.fetchrow(sql.CLAIM, OWNER, CLAIM_BATCH, LEASE_S)
        if row["finished"]:
            return time.perf_counter() - started
    raise AssertionError(f"the {len(chain)}-task chain did not end after {len(chain)} steps")


async def chain_ceiling(url: str, *, tasks: int = 40, repeats: int = 7) -> ChainCeiling:
    """One run of ``tasks`` sequential tasks at a time on one connection,
    ``repeats`` times per variant (alternating, after one warm-up each)."""
    chain = chain_ids(tasks)
    two: list[float] = []
    one: list[float] = []
    async with scratch_database(url) as (db_url, _db):
        conn = await asyncpg.connect(db_url)
        try:
            await _register(conn, "chain", "ceiling")
            for _ in range(repeats + 1):
                two.append(await _chain_once(conn, chain, one_commit=False))
                one.append(await _chain_once(conn, chain, one_commit=True))
            runs = 2 * (repeats + 1)
            await _expect_rows(
                conn,
                "chain",
                {
                    "runs WHERE state = 'success'": runs,
                    "task_instances WHERE state = 'success'": runs * tasks,
                    "transitions": runs * chain_transitions(tasks),
                },
            )
        finally:
            await conn.close()
    return ChainCeiling(median(two[1:]), median(one[1:]), tasks, repeats)


# -- intake ----------------------------------------------------------------------------


async def intake_ceiling(
    url: str,
    events: int,
    *,
    payload: Callable[[int], Any],
    partitions: int = 6,
    batch: int = INTAKE_BATCH,
    connections: int = CONNECTIONS,
) -> float:
    """Events/s: ``events`` Kafka-shaped events (``payload(i)`` as JSON, meta
    naming topic, partition and offset), each stored with its run of one
    queued task, ``batch`` events per statement and commit, ``connections``
    statements at once. Like the kafka_intake scenario without Kafka: the
    messages are in memory before the clock starts."""
    topic = "bench_orders"
    keys: list[str] = []
    payloads: list[str] = []
    metas: list[str] = []
    for i in range(events):
        partition, offset = i % partitions, i // partitions
        keys.append(f"kafka:ceiling:{topic}:{partition}:{offset}")
        payloads.append(orjson.dumps(payload(i)).decode())
        meta = {"topic": topic, "partition": partition, "offset": offset, "key": str(i)}
        metas.append(orjson.dumps({**meta, "timestamp": 0}).decode())
    batches = [
        (keys[s : s + batch], payloads[s : s + batch], metas[s : s + batch])
        for s in range(0, events, batch)
    ]
    async with scratch_database(url) as (db_url, _db):
        conns = [await asyncpg.connect(db_url) for _ in range(connections)]
        try:
            await _register(conns[0], "bench_orders", "ceiling")
            statements = [await c.prepare(sql.INTAKE) for c in conns]
            pending = iter(batches)
            stored = 0
            # source, channel, workflow, version, task, handler, actor
            fixed = ("kafka", topic, "bench_orders", "ceiling", "accept", HANDLER, "kafka")

            async def store(statement: asyncpg.prepared_stmt.PreparedStatement) -> None:
                nonlocal stored
                for k, p, m in pending:
                    count = await statement.fetchval(k, p, m, *fixed)
                    stored += count

            started = time.perf_counter()
            await asyncio.gather(*(store(s) for s in statements))
            elapsed = time.perf_counter() - started
            await _expect_rows(
                conns[0],
                "intake",
                {
                    "events": events,
                    "runs WHERE event_id IS NOT NULL": events,
                    "task_instances WHERE state = 'queued'": events,
                    "transitions": 2 * events,
                },
            )
        finally:
            for c in conns:
                await c.close()
    if stored != events:
        raise AssertionError(f"intake ceiling: stored {stored} of {events} events")
    return events / elapsed


# -- latency ---------------------------------------------------------------------------


async def latency_ceiling(url: str, *, count: int = 200, rate: float = 10.0) -> tuple[float, float]:
    """(p50, p99) ms from creating a one-task run (its commit notifies) until a
    worker woken by that notification has claimed it: the engine's trigger ->
    handler start, at ``rate`` runs/s. As in the engine, a connection of its
    own listens: PostgreSQL delivers a notification only to an idle
    connection, and one that has just prepared a statement (asyncpg leaves
    it awaiting the rest of that exchange) is not."""
    chain = chain_ids(1)
    channel = "ceiling_queued"
    samples: list[float] = []
    async with scratch_database(url) as (db_url, _db):
        trigger = await asyncpg.connect(db_url)
        listener = await asyncpg.connect(db_url)
        worker = await asyncpg.connect(db_url)
        try:
            await _register(trigger, "single", "ceiling")
            woken = asyncio.Event()
            started: asyncio.Queue[float] = asyncio.Queue()
            await listener.add_listener(channel, lambda *_: woken.set())
            claim = await worker.prepare(sql.CLAIM)
            complete = await worker.prepare(sql.COMPLETE)
            create = await trigger.prepare(sql.CREATE_RUNS_AND_NOTIFY)

            async def work() -> None:
                while True:
                    await woken.wait()
                    woken.clear()
                    row = await claim.fetchrow(OWNER, CLAIM_BATCH, LEASE_S)
                    if row["ids"]:
                        started.put_nowait(time.perf_counter())
                        await complete.fetchrow(row["ids"], row["attempts"], OWNER, chain)

            working = asyncio.create_task(work())
            try:
                for i in range(count + 5):
                    t0 = time.perf_counter()
                    await create.fetchval("single", "ceiling", 1, chain, ACTOR, HANDLER, channel)
                    at = await asyncio.wait_for(started.get(), 30)
                    if i >= 5:  # warm-up runs are not counted
                        samples.append((at - t0) * 1000)
                    await asyncio.sleep(max(0.0, 1 / rate - (time.perf_counter() - t0)))
            finally:
                working.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await working
        finally:
            for conn in (trigger, listener, worker):
                await conn.close()
    return percentile(samples, 0.5), percentile(samples, 0.99)
