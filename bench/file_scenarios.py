"""Landing-zone scenario: file_intake."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from bench.engine_scenarios import bench_settings
from bench.harness import Figure, scratch_database
from bench.registry import option, scenario
from handlers import builtin_registry
from orchestrator.app import Orchestrator
from orchestrator.spec import TaskSpec, WorkflowSpec
from orchestrator.store import Database
from sources.files import LandingSource
from sources.models import FileTrigger

option("--files", type=int, default=10_000, help="file_intake: files dropped (default 10000)")

QUIET_S = 0.2


# Another process drops the files, as a real producer would (a thread here
# would share the GIL with the orchestrator it measures). It writes every file
# under a temporary name first (a dot-directory the landing zone ignores: on
# this kind of VM creating 10,000 files alone takes seconds, which says nothing
# about intake), then, when told to, renames them all into place one by one and
# reports when its first rename began and its last one ended, on the
# system-wide monotonic clock (the same clock as this process's
# time.monotonic(), so the bench's own event loop, busy with the intake it
# measures, cannot delay the moment the figure is counted from).
_DROP = """
import os, sys, time
staging, final, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.makedirs(staging, exist_ok=True)
os.makedirs(final, exist_ok=True)
names = [f"f{i:06d}.csv" for i in range(count)]
for i, name in enumerate(names):
    with open(os.path.join(staging, name), "wb") as f:
        f.write(f"id,value\\n{i},{i * 7}\\n".encode())
print("written", flush=True)
sys.stdin.readline()
first = time.monotonic()
for name in names:
    os.rename(os.path.join(staging, name), os.path.join(final, name))
print(first, time.monotonic(), flush=True)
"""


async def _staged_drop(zone: Path, count: int) -> asyncio.subprocess.Process:
    """A dropper with ``count`` files written under temporary names, waiting
    for a line on stdin to rename them all into ``zone/drop``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _DROP,
        str(zone / ".staging"),
        str(zone / "drop"),
        str(count),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    if await proc.stdout.readline() != b"written\n":
        await proc.wait()
        raise RuntimeError(f"writing files under {zone}/.staging failed")
    return proc


async def _all_recorded(db: Database, files: int, deadline: float) -> None:
    """Poll every 20 ms, on one connection held throughout (a pool round trip
    per poll would add its reset statement to the load being measured)."""
    async with db.pool.acquire() as conn:
        while True:
            n: int = await conn.fetchval("SELECT count(*) FROM events WHERE source = 'file'")
            if n >= files:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {n} of {files} files recorded")
            await asyncio.sleep(0.02)


async def file_intake(url: str, *, files: int = 10_000) -> list[Figure]:
    spec = WorkflowSpec(
        name="landed",
        tasks=(TaskSpec(id="t", handler="noop"),),
        triggers=(
            FileTrigger(glob="drop/*.csv", quiet_s=QUIET_S, params={"path": "{{ meta.path }}"}),
        ),
    )
    with tempfile.TemporaryDirectory(prefix="orch-bench-landing-") as tmp:
        zone = Path(tmp) / "landing"
        settings = bench_settings(landing_dir=zone, landing_rescan_s=30.0)
        source = LandingSource()
        async with (
            scratch_database(url) as (db_url, db),
            Orchestrator(
                settings, db_url, registry=builtin_registry(), workflows=[spec], sources=[source]
            ),
        ):
            await asyncio.to_thread(zone.mkdir, parents=True, exist_ok=True)
            staged = time.monotonic()
            dropper = await _staged_drop(zone, files)
            written = time.monotonic() - staged
            assert dropper.stdin is not None and dropper.stdout is not None
            dropper.stdin.write(b"go\n")
            await dropper.stdin.drain()
            first_rename, last_rename = map(float, (await dropper.stdout.readline()).split())
            if await dropper.wait() != 0:
                raise RuntimeError("renaming the dropped files into place failed")
            await _all_recorded(db, files, deadline=first_rename + 300)
            recorded = time.monotonic()
            transactions = source.ingest_calls
    ctx = {
        "files": files,
        "drop": "another process renames temp-named files into place",
        "measured": "from the end of the last rename until every file's event is committed",
        "completeness": f"quiet period {QUIET_S}s",
        "staging_write_s (not measured)": round(written, 3),
        "rename_s": round(last_rename - first_rename, 3),
        "from_first_rename_s": round(recorded - first_rename, 3),
        "transactions": transactions,
        "runs_started": "one noop run per file, workers on",
    }
    return [
        Figure(
            "file_intake",
            "after_last_rename_s",
            recorded - last_rename,
            "s",
            "<= 1",
            context=ctx,
        )
    ]


@scenario(
    "file_intake",
    "10,000 small files renamed into place at once: seconds from the last rename"
    " until all are recorded",
)
async def _file_intake(url: str, args: argparse.Namespace, _tx: float) -> list[Figure]:
    return await file_intake(url, files=args.files)
