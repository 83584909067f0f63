"""NOTIFY and LISTEN: one listening connection per process whatever listens,
that comes back by itself, and the notifications a commit sends."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from eventually import eventually

from handlers import builtin_registry
from orchestrator.app import Orchestrator
from orchestrator.notices import ALERTS_CHANNEL, DEFERRALS_CHANNEL, RUNS_CHANNEL, TASKS_CHANNEL
from orchestrator.run_waiter import RunWaiter
from orchestrator.settings import Settings
from orchestrator.spec import TaskSpec, WorkflowSpec
from orchestrator.store import Database

pytestmark = pytest.mark.timeout(60)

LISTENING = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND query LIKE 'LISTEN %'
"""


def settings(**kw: Any) -> Settings:
    base: dict[str, Any] = {"worker_slots": 2, "poll_interval_s": 0.2, "lease_s": 5.0}
    return Settings(**{**base, **kw})


async def fetchval(db: Database, sql: str) -> Any:
    async with db.pool.acquire() as conn:
        return await conn.fetchval(sql)


async def test_worker_triggerer_and_run_waiters_share_one_listening_connection(
    db_url: str,
) -> None:
    spec = WorkflowSpec(name="one", tasks=(TaskSpec(id="a", handler="noop"),))
    async with Orchestrator(settings(), db_url, registry=builtin_registry(), workflows=[spec]) as o:
        assert o.db is not None and o.engine is not None
        async with RunWaiter(o.db, poll_s=600) as first, RunWaiter(o.db, poll_s=600) as second:
            listener = o.db.listener
            await eventually(
                lambda: _true(
                    listener.channels
                    == {TASKS_CHANNEL, RUNS_CHANNEL, DEFERRALS_CHANNEL, ALERTS_CHANNEL}
                ),
                what="every channel listened to",
            )
            assert await fetchval(o.db, LISTENING) == 1
            # Woken by the notification: the poll would come long after the deadline.
            run_id = await o.engine.trigger("one")
            async with asyncio.timeout(30):
                assert (await first.wait([run_id]))[run_id] == "success"
                assert (await second.wait([run_id]))[run_id] == "success"
        # The waiters leave; the worker, the triggerer and the alert relay still listen.
        await eventually(
            lambda: _true(listener.channels == {TASKS_CHANNEL, DEFERRALS_CHANNEL, ALERTS_CHANNEL}),
            what="the runs channel no longer listened to",
        )


async def test_the_listener_comes_back_after_its_connection_is_killed(db: Database) -> None:
    seen: list[str] = []
    subscription = db.listener.subscribe(RUNS_CHANNEL, seen.append)
    try:
        await subscription.listening()
        assert seen == [""]  # subscribed: re-check everything once
        killed = await fetchval(
            db,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND query LIKE 'LISTEN %'",
        )
        assert killed == 1
        await eventually(lambda: _true(len(seen) >= 2), what="the listener back")
        await subscription.listening()
        conn = await asyncpg.connect(db.url)
        try:
            await conn.execute("SELECT pg_notify($1, $2)", RUNS_CHANNEL, "42")
        finally:
            await conn.close()
        await eventually(lambda: _true("42" in seen), what="a notification after reconnecting")
    finally:
        await subscription.close()
    assert db.listener.channels == set()


async def test_a_run_end_is_announced_with_its_id_once(db_url: str) -> None:
    spec = WorkflowSpec(
        name="two",
        tasks=(TaskSpec(id="a", handler="noop"), TaskSpec(id="b", handler="noop", upstream=("a",))),
    )
    async with Orchestrator(settings(), db_url, registry=builtin_registry(), workflows=[spec]) as o:
        assert o.db is not None and o.engine is not None
        seen: list[str] = []
        subscription = o.db.listener.subscribe(RUNS_CHANNEL, seen.append)
        await subscription.listening()
        run_id = await o.engine.trigger("two")
        await eventually(lambda: _true(str(run_id) in seen), what="the run's end announced")
        assert seen.count(str(run_id)) == 1
        await subscription.close()


async def _true(value: bool) -> bool:
    return value


async def test_waiting_for_many_runs_reads_only_those_that_ended(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator import run_waiter

    reads: list[int] = []
    real = run_waiter.ended_run_states

    async def counted(db: Database, run_ids: Any) -> Any:
        ids = list(run_ids)
        reads.append(len(ids))
        return await real(db, ids)

    monkeypatch.setattr(run_waiter, "ended_run_states", counted)
    spec = WorkflowSpec(name="many", tasks=(TaskSpec(id="a", handler="noop"),))
    async with Orchestrator(
        settings(worker_slots=8), db_url, registry=builtin_registry(), workflows=[spec]
    ) as o:
        assert o.engine is not None and o.db is not None
        from orchestrator.engine import RunRequest

        count = 300
        ids = await o.engine.create_runs([RunRequest("many") for _ in range(count)], actor="t")
        async with run_waiter.RunWaiter(o.db, poll_s=5, full_read_s=60) as waiter:
            states = await asyncio.wait_for(waiter.wait(ids), 60)
    assert len(states) == count and set(states.values()) == {"success"}
    # The first read asks for every run; then each round only for the runs the
    # notifications named: about one read per run in all, not one per run per round.
    assert reads[0] <= count and sum(reads) <= 2 * count, reads


async def test_a_run_triggered_in_the_workers_process_is_claimed_in_its_own_commit(
    db_url: str,
) -> None:
    """The commit that queues a root claims it for the process's worker: the
    claim is part of the run's creating transaction, and no notification or
    poll is needed to start it."""
    spec = WorkflowSpec(
        name="handed",
        tasks=(TaskSpec(id="a", handler="noop"), TaskSpec(id="b", handler="noop", upstream=("a",))),
    )
    # A poll far beyond the test's timeout: only the hand-over can start the run this fast.
    async with Orchestrator(
        settings(poll_interval_s=600), db_url, registry=builtin_registry(), workflows=[spec]
    ) as o:
        assert o.db is not None and o.engine is not None and o.worker is not None
        worker = o.worker
        # The claim loop's first claim, at start, reserves the free slots while
        # it runs: a commit then has none to claim for, and the loop takes the
        # run instead. Once it is done, the loop sleeps for the poll.
        await eventually(lambda: _true(worker.claim_rounds >= 1), what="the first claim done")
        async with RunWaiter(o.db, poll_s=600) as waiter:
            run_id = await o.engine.trigger("handed")
            async with asyncio.timeout(30):
                assert (await waiter.wait([run_id]))[run_id] == "success"
        async with o.db.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT task_id, to_state, txid FROM transitions WHERE run_id = $1 ORDER BY id",
                run_id,
            )
    created = rows[0]  # the run's first transition: its creation
    assert created["task_id"] is None, rows
    claimed_a = [r["txid"] for r in rows if r["task_id"] == "a" and r["to_state"] == "running"]
    assert claimed_a == [created["txid"]], rows


async def test_a_commit_claims_nothing_for_a_stopped_worker(db_url: str) -> None:
    spec = WorkflowSpec(name="later", tasks=(TaskSpec(id="a", handler="noop"),))
    async with Orchestrator(settings(), db_url, registry=builtin_registry(), workflows=[spec]) as o:
        assert o.db is not None and o.engine is not None and o.worker is not None
        await o.worker.stop(grace_s=1)
        assert o.engine.local is None
        run_id = await o.engine.trigger("later")
        async with o.db.pool.acquire() as conn:
            state = await conn.fetchval(
                "SELECT state::text FROM task_instances WHERE run_id = $1", run_id
            )
    assert state == "queued"
