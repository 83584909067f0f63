"""Shared machinery: a scratch database, figures, the results file, the table."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.embedded import EmbeddedPostgres
from orchestrator.store import Database, connect, create_database, drop_database

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Figure:
    scenario: str
    metric: str
    value: float
    unit: str
    target: str = ""
    context: dict[str, Any] = field(default_factory=dict)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: list[float]) -> float:
    return statistics.median(values)


def server_url() -> tuple[str, EmbeddedPostgres | None]:
    """ORCHESTRATOR_DATABASE_URL when set, else an embedded server."""
    url = os.environ.get("ORCHESTRATOR_DATABASE_URL")
    if url:
        return url, None
    server = EmbeddedPostgres(Path(".orchestrator") / "bench-pg")
    return server.start(), server


@asynccontextmanager
async def scratch_database(
    url: str, *, migrate: bool = True
) -> AsyncIterator[tuple[str, Database]]:
    """A fresh database on the server at ``url``, dropped afterwards."""
    name = f"orch_bench_{uuid.uuid4().hex[:8]}"
    db_url = await create_database(url, name)
    db = await connect(db_url, size=4)
    try:
        if migrate:
            await db.migrate()
        yield db_url, db
    finally:
        await db.close()
        await drop_database(url, name)


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """CPU time (user + system) each process has used so far, from ``/proc``
    (Linux); processes gone, or not readable, are left out."""
    tick = os.sysconf("SC_CLK_TCK")
    used = {}
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        used[pid] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return used


def machine_context() -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": commit,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "host": platform.node(),
    }


def record(figures: list[Figure], results_file: Path) -> None:
    results_file.parent.mkdir(parents=True, exist_ok=True)
    ctx = machine_context()
    with results_file.open("a", encoding="utf-8") as out:
        for f in figures:
            row = asdict(f)
            row["context"] = {**ctx, **f.context}
            out.write(json.dumps(row, sort_keys=True) + "\n")


def table(figures: list[Figure]) -> str:
    rows = [("scenario", "metric", "value", "unit", "target", "vs baseline", "vs ceiling")]
    for f in figures:
        ratio = f.context.get("ratio_to_baseline")
        # The share of its raw-SQL ceiling a figure reaches (100 %: as fast).
        share = f.context.get("ratio_to_ceiling")
        rows.append(
            (
                f.scenario,
                f.metric,
                f"{f.value:,.3f}" if f.value < 100 else f"{f.value:,.0f}",
                f.unit,
                f.target,
                f"{ratio:.3f}x" if isinstance(ratio, float) else "",
                f"{share:.0%}" if isinstance(share, float) else "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)
