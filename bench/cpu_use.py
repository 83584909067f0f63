"""CPU time of processes, read from ``/proc`` (Linux): what a piece of work
costs, which other load on the machine changes far less than it changes rates."""

from __future__ import annotations

import os
from pathlib import Path

import asyncpg

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (None: gone, or not Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces: count the fields after it.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


async def backends_cpu_s(conn: asyncpg.Connection, application_name: str) -> float:
    """CPU seconds of the server processes of the sessions named
    ``application_name`` (the server must be on this machine)."""
    pids = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1", application_name
    )
    return sum(cpu_s(row["pid"]) or 0.0 for row in pids)
