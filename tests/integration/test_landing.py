"""The landing zone against a real file system and a real PostgreSQL: files
become events only when complete, once per content, and links are refused."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from eventually import eventually

from handlers import builtin_registry
from orchestrator.app import Orchestrator
from orchestrator.clock import SYSTEM_CLOCK, Clock, ManualClock
from orchestrator.loader import load_path
from orchestrator.run_waiter import wait_for_runs
from orchestrator.settings import Settings
from orchestrator.spec import RetryPolicy, TaskSpec, WorkflowSpec
from orchestrator.states import RunState
from orchestrator.store import SQL, database_name
from sources.files import LandingSource
from sources.models import FileTrigger
from sources.queries import SQL as TRIGGERS_SQL

ONCE = RetryPolicy(max_attempts=1)


def flow(name: str, handler: str = "echo", **trigger: Any) -> WorkflowSpec:
    return WorkflowSpec(
        name=name,
        params={"path": ""},
        tasks=(
            TaskSpec(
                id="t",
                handler=handler,
                inputs={"message" if handler == "fail" else "path": "{{ params.path }}"},
                retry=ONCE,
            ),
        ),
        triggers=(FileTrigger(params={"path": "{{ meta.path }}"}, **trigger),),
    )


@asynccontextmanager
async def landing(
    db_url: str,
    landing_dir: Path,
    *workflows: WorkflowSpec,
    rescan_s: float = 1.0,
    worker_slots: int = 4,
    move_interval_s: float = 0.1,
    clock: Clock | None = None,
) -> AsyncIterator[tuple[Orchestrator, LandingSource]]:
    settings = Settings(
        worker_slots=worker_slots,
        poll_interval_s=0.2,
        lease_s=5.0,
        landing_dir=landing_dir,
        landing_rescan_s=rescan_s,
    )
    source = LandingSource(default_quiet_s=0.3, move_interval_s=move_interval_s)
    async with Orchestrator(
        settings,
        db_url,
        registry=builtin_registry(),
        workflows=workflows,
        sources=[source],
        clock=clock,
    ) as orch:
        yield orch, source


async def file_events(orch: Orchestrator) -> list[dict[str, Any]]:
    assert orch.db is not None
    async with orch.db.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT id, channel, dedup_key, meta::text AS meta, run_ids FROM events"
            " WHERE source = 'file' ORDER BY id"
        )
    return [{**dict(r), "meta": orjson.loads(r["meta"])} for r in rows]


async def count(orch: Orchestrator, sql: str) -> int:
    assert orch.db is not None
    async with orch.db.pool.acquire() as conn:
        n: int = await conn.fetchval(sql)
    return n


async def settled(source: LandingSource, *, scans: int = 1) -> None:
    """Wait until ``scans`` more full rescans have run and nothing is in flight."""
    target = source.scans + scans

    async def probe() -> bool:
        return source.scans >= target and source.idle

    await eventually(probe, timeout=20, what="the landing source to settle")


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_a_slow_writer_starts_nothing_until_the_file_is_quiet(
    db_url: str, tmp_path: Path
) -> None:
    zone = tmp_path / "landing"
    clock = ManualClock(SYSTEM_CLOCK.now())
    spec = flow("slow", glob="slow/*.csv", quiet_s=0.6)
    async with landing(db_url, zone, spec, clock=clock) as (orch, src):
        target = zone / "slow" / "big.csv"
        target.parent.mkdir(parents=True)
        written = bytearray()

        def append(i: int) -> None:
            chunk = f"row {i}\n".encode() * 50
            with target.open("ab") as f:
                f.write(chunk)
            written.extend(chunk)

        append(0)

        async def looked_at() -> bool:
            return "slow/big.csv" in src.pending()

        await eventually(looked_at, what="the growing file to be looked at")
        # The workload: 24 more appends, 0.1 s of the source's clock apart (well
        # inside the 0.6 s quiet period): every look finds the file changed.
        for i in range(1, 25):
            await clock.advance(0.1)
            append(i)
            assert await file_events(orch) == [], f"recorded while still growing ({i})"
            assert "slow/big.csv" in src.pending()

        async def recorded() -> list[dict[str, Any]]:
            await clock.advance(0.2)  # the writer has stopped: time passes
            return await file_events(orch)

        [event] = await eventually(recorded, what="the complete file's event")
        assert event["channel"] == "slow/big.csv"
        assert event["meta"]["size"] == len(written)
        assert event["meta"]["sha256"] == sha(bytes(written))
        assert event["meta"]["absolute_path"] == str(target.resolve())
        assert len(event["run_ids"]) == 1


async def test_a_part_file_renamed_into_place_is_one_event_for_the_final_name(
    db_url: str, tmp_path: Path
) -> None:
    zone = tmp_path / "landing"
    async with landing(db_url, zone, flow("crm", glob="crm/*", quiet_s=0.2)) as (orch, src):
        write(zone / "crm" / "a.csv.part", b"id,name\n1,Ada\n")
        for ignored in ("crm/b.csv.tmp", "crm/.c.csv", "crm/.staging/d.csv"):
            write(zone / ignored, b"temporary")
        await settled(src)  # a full scan has seen (and ignored) the temporary names
        assert await file_events(orch) == []
        os.rename(zone / "crm" / "a.csv.part", zone / "crm" / "a.csv")
        # A file no trigger matches is still recorded (a sensor may wait for it).
        write(zone / "elsewhere" / "notes.txt", b"no trigger")

        async def two() -> list[dict[str, Any]]:
            events = await file_events(orch)
            return events if len(events) == 2 else []

        await eventually(two, what="the renamed and the unmatched file's events")
        await settled(src)
        events = {e["channel"]: e for e in await file_events(orch)}
        assert sorted(events) == ["crm/a.csv", "elsewhere/notes.txt"]
        assert events["crm/a.csv"]["meta"]["sha256"] == sha(b"id,name\n1,Ada\n")
        assert len(events["crm/a.csv"]["run_ids"]) == 1
        assert events["elsewhere/notes.txt"]["run_ids"] == []


async def test_marker_mode_waits_for_success_and_done_markers(db_url: str, tmp_path: Path) -> None:
    zone = tmp_path / "landing"
    dirwide = flow("dirwide", glob="m1/*.csv", complete_when="marker", marker="_SUCCESS")
    per_file = flow("perfile", glob="m2/*.csv", complete_when="marker", marker="{name}.done")
    async with landing(db_url, zone, dirwide, per_file) as (orch, src):
        for rel in ("m1/a.csv", "m1/b.csv", "m2/c.csv", "m2/d.csv"):
            write(zone / rel, rel.encode())

        async def all_waiting_for_markers() -> bool:
            waiting = src.pending()
            return len(waiting) == 4 and all(w.startswith("marker") for w in waiting.values())

        await eventually(all_waiting_for_markers, what="four files waiting for markers")
        assert src.pending()["m2/c.csv"] == "marker m2/c.csv.done"
        assert await file_events(orch) == []

        write(zone / "m1" / "_SUCCESS", b"")
        write(zone / "m2" / "c.csv.done", b"")

        async def three_recorded() -> list[str]:
            got = sorted(e["channel"] for e in await file_events(orch))
            return got if len(got) == 3 else []

        assert await eventually(three_recorded) == ["m1/a.csv", "m1/b.csv", "m2/c.csv"]
        await settled(src)
        # The markers themselves never become events; d.csv still waits for its own.
        assert len(await file_events(orch)) == 3
        assert src.pending() == {"m2/d.csv": "marker m2/d.csv.done"}


async def test_files_dropped_while_stopped_are_picked_up_on_start(
    db_url: str, tmp_path: Path
) -> None:
    zone = tmp_path / "landing"
    spec = flow("drop", glob="in/*.csv", quiet_s=0.2)
    write(zone / "in" / "before.csv", b"dropped before the first start")
    async with landing(db_url, zone, spec) as (orch, src):
        await eventually(lambda: file_events(orch), what="the file dropped before start")

    write(zone / "in" / "while_stopped.csv", b"dropped while stopped")
    async with landing(db_url, zone, spec) as (orch, src):

        async def both() -> bool:
            return len(await file_events(orch)) == 2

        await eventually(both, what="the file dropped while stopped")
        await settled(src)
        events = await file_events(orch)
        # The file recorded before the restart is not recorded again.
        assert [e["channel"] for e in events] == ["in/before.csv", "in/while_stopped.csv"]
        assert src.seen("in/before.csv") is not None
        assert await count(orch, "SELECT count(*) FROM runs") == 2


async def test_links_and_escapes_are_refused_with_a_reason(db_url: str, tmp_path: Path) -> None:
    zone = tmp_path / "landing"
    outside = tmp_path / "outside"
    write(outside / "secret.csv", b"not yours")
    write(zone / "crm" / "real.csv", b"fine")
    (zone / "crm" / "abs.csv").symlink_to(outside / "secret.csv")
    (zone / "crm" / "up.csv").symlink_to(Path("..") / ".." / "outside" / "secret.csv")
    (zone / "crm" / "inner.csv").symlink_to("real.csv")
    (zone / "escape").symlink_to("..")
    async with landing(db_url, zone, flow("any", glob="**", quiet_s=0.2)) as (orch, src):
        assert orch.db is not None

        async def letters() -> dict[str, str]:
            assert orch.db is not None
            async with orch.db.pool.acquire() as conn:
                rows = await conn.fetch(
                    "SELECT channel, reason FROM dead_letter_events WHERE source = 'file'"
                )
            return {r["channel"]: r["reason"] for r in rows}

        async def four() -> dict[str, str]:
            got = await letters()
            return got if len(got) == 4 else {}

        refused = await eventually(four, what="four refusals")
        assert "outside the landing zone" in refused["crm/abs.csv"]
        assert "outside the landing zone" in refused["crm/up.csv"]
        assert "outside the landing zone" in refused["escape"]
        assert "symbolic link" in refused["crm/inner.csv"]
        await eventually(lambda: file_events(orch), what="the regular file's event")
        await settled(src)
        assert [e["channel"] for e in await file_events(orch)] == ["crm/real.csv"]
        assert await count(orch, "SELECT count(*) FROM runs") == 1
        assert await count(orch, "SELECT count(*) FROM dead_letter_events") == 4  # once each
        # Rescans see the same links again and write nothing more.
        calls = src.ingest_calls
        await settled(src, scans=2)
        assert src.ingest_calls == calls


@pytest.mark.timeout(90)
async def test_a_burst_of_2000_files_is_2000_events_in_few_transactions(
    db_url: str, tmp_path: Path
) -> None:
    zone = tmp_path / "landing"
    spec = flow("burst", handler="noop", glob="burst/**/*.dat", quiet_s=0.3)
    async with landing(db_url, zone, spec, rescan_s=0.5, worker_slots=0) as (orch, src):
        for i in range(2000):
            write(zone / "burst" / f"d{i % 10}" / f"f{i:04d}.dat", f"file {i}".encode())

        async def all_recorded() -> bool:
            return await count(orch, "SELECT count(*) FROM events") >= 2000

        await eventually(all_recorded, timeout=60, what="2000 events")
        await settled(src, scans=2)
        assert await count(orch, "SELECT count(*) FROM events") == 2000
        assert await count(orch, "SELECT count(DISTINCT channel) FROM events") == 2000
        assert await count(orch, "SELECT count(*) FROM runs") == 2000
        assert src.ingest_calls <= 40, f"{src.ingest_calls} transactions for 2000 files"


async def test_a_file_renamed_into_place_is_looked_at_once_after_its_quiet_period(
    db_url: str, tmp_path: Path
) -> None:
    # What the watcher saw is the first of the two looks a quiet period needs:
    # a file that stays as it was is looked at once more, when it can complete.
    zone = tmp_path / "landing"
    spec = flow("renamed", handler="noop", glob="in/*.csv", quiet_s=0.3)
    async with landing(db_url, zone, spec, worker_slots=0) as (orch, src):
        staging = zone / "in" / ".staging"
        for i in range(50):
            write(staging / f"f{i:02d}.csv", f"row {i}".encode())
        for i in range(50):
            os.rename(staging / f"f{i:02d}.csv", zone / "in" / f"f{i:02d}.csv")

        async def all_recorded() -> bool:
            return await count(orch, "SELECT count(*) FROM events") == 50

        await eventually(all_recorded, timeout=30, what="50 events")
        await settled(src)
        assert src.looks == 50


async def test_touch_is_not_an_event_but_new_content_is(db_url: str, tmp_path: Path) -> None:
    zone = tmp_path / "landing"
    path = zone / "t" / "x.csv"
    async with landing(db_url, zone, flow("t", glob="t/*.csv", quiet_s=0.2)) as (orch, src):
        write(path, b"v1")
        await eventually(lambda: file_events(orch), what="the first version")

        later = path.stat().st_mtime_ns + 5_000_000_000
        os.utime(path, ns=(later, later))

        async def touch_seen() -> bool:
            seen = src.seen("t/x.csv")
            return seen is not None and seen.stat.mtime_ns == later and src.idle

        await eventually(touch_seen, what="the touch to be looked at")
        assert len(await file_events(orch)) == 1

        for version, expected in [(b"v2, longer", 2), (b"v1", 3)]:  # A, B, A: three events
            write(path, version)

            async def recorded(n: int = expected) -> list[dict[str, Any]]:
                events = await file_events(orch)
                return events if len(events) == n else []

            events = await eventually(recorded, what=f"event {expected}")
            assert events[-1]["meta"]["sha256"] == sha(version)
        assert await count(orch, "SELECT count(*) FROM runs") == 3


@pytest.mark.timeout(90)
async def test_files_complete_while_the_database_is_down_are_recorded_once_it_is_back(
    db_url: str, pg_admin_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    zone = tmp_path / "landing"
    spec = flow("down", handler="noop", glob="d/*.csv", quiet_s=0.2)
    names = [f"f{i}.csv" for i in range(10)]
    async with landing(db_url, zone, spec, worker_slots=0) as (orch, src):
        for name in names:
            write(zone / "d" / name, b"v1")

        async def recorded(n: int) -> bool:
            return await count(orch, "SELECT count(*) FROM events") == n

        await eventually(lambda: recorded(10), what="the first versions")
        await settled(src)
        database = database_name(db_url)
        admin = await asyncpg.connect(pg_admin_url)
        try:
            await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                database,
            )
            # Known paths need no database to be checked: the new versions are
            # complete and hashed, and their recording fails.
            for name in names:
                write(zone / "d" / name, b"v2, longer")

            async def recording_failed() -> bool:
                return any(
                    r.getMessage().startswith("recording") and "failed" in r.getMessage()
                    for r in caplog.records
                )

            await eventually(recording_failed, timeout=30, what="a failed recording")
        finally:
            await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
            await admin.close()
        await eventually(lambda: recorded(20), timeout=60, what="the second versions")
        await settled(src)
        events = await file_events(orch)
        assert sorted(e["channel"] for e in events) == sorted(f"d/{n}" for n in names * 2)
        assert {e["meta"]["sha256"] for e in events[10:]} == {sha(b"v2, longer")}
        assert await count(orch, "SELECT count(*) FROM runs") == 20


async def test_on_done_move_sends_files_to_processed_or_failed(db_url: str, tmp_path: Path) -> None:
    zone = tmp_path / "landing"
    good = flow("good", glob="ok/*.csv", quiet_s=0.2, on_done="move")
    bad = flow("bad", handler="fail", glob="bad/*.csv", quiet_s=0.2, on_done="move")
    async with landing(db_url, zone, good, bad) as (orch, src):
        write(zone / "ok" / "a.csv", b"good rows")
        write(zone / "bad" / "b.csv", b"bad rows")

        async def moved() -> dict[str, int]:
            assert orch.db is not None
            async with orch.db.pool.acquire() as conn:
                rows = await conn.fetch("SELECT state, count(*) FROM landing_moves GROUP BY 1")
            states = {r["state"]: r["count"] for r in rows}
            return states if states == {"processed": 1, "failed": 1} else {}

        await eventually(moved, timeout=20, what="both moves recorded")
        assert not (zone / "ok" / "a.csv").exists()
        assert not (zone / "bad" / "b.csv").exists()
        assert (zone / "processed" / "ok" / "a.csv").read_bytes() == b"good rows"
        assert (zone / "failed" / "bad" / "b.csv").read_bytes() == b"bad rows"

        # The same bytes dropped again are a new file (the first one is gone):
        # a new run, and the earlier processed copy is kept.
        write(zone / "ok" / "a.csv", b"good rows")

        async def two_processed() -> list[str]:
            names = [p.name for p in (zone / "processed" / "ok").iterdir()]
            return names if len(names) == 2 and not (zone / "ok" / "a.csv").exists() else []

        names = await eventually(two_processed, timeout=20, what="the second drop moved")
        events = await file_events(orch)
        second = [e for e in events if e["channel"] == "ok/a.csv"][-1]
        assert sorted(names) == sorted(["a.csv", f"a.{second['id']}.csv"])
        for name in names:
            assert (zone / "processed" / "ok" / name).read_bytes() == b"good rows"
        await settled(src)
        # Files under processed/ and failed/ are never events themselves.
        assert len(await file_events(orch)) == 3


async def test_two_moves_of_one_path_are_never_in_one_pass(db_url: str, tmp_path: Path) -> None:
    # Both runs end before any move: the older event's file was rewritten, so
    # it is skipped; the newer one moves, in the next pass (in one pass both
    # would have been given the same target).
    zone = tmp_path / "landing"
    spec = flow("good", glob="ok/*.csv", quiet_s=0.2, on_done="move")
    async with landing(db_url, zone, spec, move_interval_s=3600) as (orch, src):
        assert orch.db is not None
        for n, data in enumerate([b"first", b"second"], start=1):
            write(zone / "ok" / "a.csv", data)

            async def recorded(n: int = n) -> list[dict[str, Any]]:
                events = await file_events(orch)
                return events if len(events) == n else []

            events = await eventually(recorded, what=f"event {n}")
        run_ids = [rid for event in events for rid in event["run_ids"]]
        states = await wait_for_runs(orch.db, run_ids, timeout=20)
        assert set(states.values()) == {RunState.SUCCESS}
        assert await src.move_finished() == 0
        assert await src.move_finished() == 1
        assert await src.move_finished() == 0
        sql = "SELECT event_id, state, target FROM landing_moves ORDER BY event_id"
        async with orch.db.pool.acquire() as conn:
            moves = [tuple(r) for r in await conn.fetch(sql)]
        first, second = (e["id"] for e in events)
        assert moves == [
            (first, "skipped", "processed/ok/a.csv"),
            (second, "processed", "processed/ok/a.csv"),
        ]
        assert (zone / "processed" / "ok" / "a.csv").read_bytes() == b"second"
        assert not (zone / "ok" / "a.csv").exists()


async def test_a_restart_finishes_a_move_cut_short_and_repeats_none(
    db_url: str, tmp_path: Path
) -> None:
    zone = tmp_path / "landing"
    spec = flow("good", glob="ok/*.csv", quiet_s=0.2, on_done="move")
    # First process: records the file and runs the workflow, but dies before moving it.
    async with landing(db_url, zone, spec, move_interval_s=3600) as (orch, _src):
        write(zone / "ok" / "a.csv", b"rows")
        [event] = await eventually(lambda: file_events(orch), what="the event")
        assert orch.db is not None
        assert (await wait_for_runs(orch.db, event["run_ids"], timeout=20)) == {
            event["run_ids"][0]: RunState.SUCCESS
        }
        # Crash point: the target was stored and the file linked there, not yet unlinked.
        async with orch.db.pool.acquire() as conn:
            await conn.execute(
                TRIGGERS_SQL.landing_move_targets, [event["id"]], ["processed/ok/a.csv"]
            )
        (zone / "processed" / "ok").mkdir(parents=True)
        os.link(zone / "ok" / "a.csv", zone / "processed" / "ok" / "a.csv")

    async with landing(db_url, zone, spec) as (orch, src):

        async def finished() -> bool:
            n = await count(orch, "SELECT count(*) FROM landing_moves WHERE state = 'processed'")
            return n == 1

        await eventually(finished, what="the move to be finished")
        assert not (zone / "ok" / "a.csv").exists()
        assert [p.name for p in (zone / "processed" / "ok").iterdir()] == ["a.csv"]
        assert (zone / "processed" / "ok" / "a.csv").read_bytes() == b"rows"
        await settled(src)
        assert len(await file_events(orch)) == 1
        assert await src.move_finished() == 0


async def test_the_crm_files_example_runs_for_a_dropped_export(
    db_url: str, tmp_path: Path, examples_dir: Path
) -> None:
    loaded = load_path(examples_dir / "crm_files.yaml", base=builtin_registry())
    assert loaded.errors == []
    zone = tmp_path / "landing"
    async with landing(db_url, zone, loaded.workflows["crm_files"]) as (orch, _src):
        assert orch.db is not None
        write(zone / "crm" / ".contacts.csv", b"id,email\n1,ada@example.com\n")
        os.rename(zone / "crm" / ".contacts.csv", zone / "crm" / "contacts.csv")
        [event] = await eventually(lambda: file_events(orch), what="the export's event")
        [run_id] = event["run_ids"]
        states = await wait_for_runs(orch.db, [run_id], timeout=20)
        assert states[run_id] == RunState.SUCCESS
        async with orch.db.pool.acquire() as conn:
            tasks = {t["task_id"]: t for t in await conn.fetch(SQL.task_instances_of_run, run_id)}
        notify = orjson.loads(tasks["notify"]["output"])
        assert notify["message"].startswith("loaded crm/contacts.csv into crm.contacts")
        checked = orjson.loads(tasks["validate_file"]["output"])
        assert checked["checksum"] == sha(b"id,email\n1,ada@example.com\n")
