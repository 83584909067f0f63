"""Time is read and waited for through a clock (orchestrator/clock.py).

A real-time sleep or ``datetime.now()`` elsewhere makes the code untestable
without waiting and the tests flaky on a loaded machine. The clock module is
the only place that touches real time: code takes a :class:`Clock` (handlers
get ``ctx.clock``), and the few waits that must be real (a batching window
that goes on while a test holds a manual clock still, a poll of a child
process, a test helper's deadline) call the clock module's named
``real_pause``, ``real_block`` and ``monotonic`` so that each says why.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("orchestrator", "sources", "handlers", "tests")
CLOCK_MODULE = "orchestrator/clock.py"

FORBIDDEN = {
    "asyncio.sleep": re.compile(r"\basyncio\.sleep\((?!0\))"),  # sleep(0) only yields
    "time.sleep": re.compile(r"\btime\.sleep\("),
    "datetime.now": re.compile(r"\bdatetime\.(?:now|utcnow|today)\("),
    "date.today": re.compile(r"\bdate\.today\("),
    "time.time": re.compile(r"\btime\.time\("),
    "time.monotonic": re.compile(r"\btime\.(?:monotonic|perf_counter)\("),
    "from time import": re.compile(r"^\s*from time import"),
    "from asyncio import sleep": re.compile(r"^\s*from asyncio import .*\bsleep\b"),
}


def _hits() -> list[tuple[str, str, int]]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in (CLOCK_MODULE, "tests/test_no_real_time.py"):
                continue  # the clock itself, and this file naming the patterns
            for number, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                for what, pattern in FORBIDDEN.items():
                    if pattern.search(code):
                        found.append((rel, what, number))
    return found


def test_time_is_read_and_waited_for_only_through_the_clock_module() -> None:
    hits = _hits()
    assert not hits, (
        "real time used outside orchestrator/clock.py; take a Clock (ctx.clock in "
        "handlers), wait on an event, or call the clock module's real_pause/real_block/"
        "monotonic for a wait that must be real:\n"
        + "\n".join(f"  {rel}:{n}: {what}" for rel, what, n in hits)
    )


def test_the_check_finds_what_it_looks_for(tmp_path: Path) -> None:
    # Each sample is "<module>.<call>" put together here, so this file holds
    # no literal call of its own for a grep to find.
    samples = {
        "await asyncio." + "sleep(1)": "asyncio.sleep",
        "time." + "sleep(0.1)": "time.sleep",
        "datetime." + "now(UTC)": "datetime.now",
        "time." + "monotonic()": "time.monotonic",
        "from time import " + "sleep": "from time import",
    }
    for line, what in samples.items():
        assert FORBIDDEN[what].search(line), line
    assert not FORBIDDEN["asyncio.sleep"].search("await asyncio.sleep(0)")
