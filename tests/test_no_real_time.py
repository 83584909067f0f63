"""Time is read and waited for through a clock (orchestrator/clock.py).

A real-time sleep or ``datetime.now()`` elsewhere makes the code untestable
without waiting and the tests flaky on a loaded machine. The few places that
need the event loop's or the operating system's own time are listed below,
each with its reason; an entry that no longer matches anything fails too, so
the list cannot go stale.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("orchestrator", "sources", "handlers", "tests")

FORBIDDEN = {
    "asyncio.sleep": re.compile(r"\basyncio\.sleep\((?!0\))"),  # sleep(0) only yields
    "time.sleep": re.compile(r"\btime\.sleep\("),
    "datetime.now": re.compile(r"\bdatetime\.now\("),
    "time.time": re.compile(r"\btime\.time\("),
    "time.monotonic": re.compile(r"\btime\.monotonic\("),
}

#: (file, what) -> why this place uses real time.
ALLOWED: dict[tuple[str, str], str] = {
    ("orchestrator/clock.py", "asyncio.sleep"): "the system clock itself",
    ("orchestrator/clock.py", "datetime.now"): "the system clock itself",
    ("orchestrator/embedded.py", "time.monotonic"): (
        "stops the embedded PostgreSQL process synchronously, outside any event loop"
    ),
    ("orchestrator/embedded.py", "time.sleep"): (
        "stops the embedded PostgreSQL process synchronously, outside any event loop"
    ),
    ("orchestrator/worker.py", "asyncio.sleep"): (
        "the flush window lets attempts finishing on the event loop share one commit; "
        "it must go on while a test holds a manual clock still"
    ),
    ("orchestrator/testing.py", "asyncio.sleep"): (
        "the test kit looks at a task's state until it is reached: the worker commits "
        "in real time, and task states send no notification"
    ),
    ("sources/webhook_batch.py", "asyncio.sleep"): (
        "the batching window lets concurrent requests share one commit (as the worker's flush)"
    ),
    ("sources/kafka_broker.py", "time.monotonic"): (
        "starts the test broker's process synchronously, before any event loop"
    ),
    ("sources/kafka_broker.py", "time.sleep"): (
        "starts the test broker's process synchronously, before any event loop"
    ),
    ("sources/kafka_logs.py", "time.monotonic"): (
        "bounds a read from a real broker, which answers in real time"
    ),
    ("handlers/shell.py", "asyncio.sleep"): (
        "polls a child process group for its exit, which happens in real time"
    ),
    ("tests/eventually.py", "asyncio.sleep"): "the deadline helper: waits for real processes",
    ("tests/eventually.py", "time.monotonic"): "the deadline helper: waits for real processes",
    ("tests/eventually.py", "time.sleep"): "the deadline helper's blocking twin",
    ("tests/unit/test_handlers_shell.py", "asyncio.sleep"): (
        "waits with a deadline for real child processes"
    ),
    ("tests/integration/test_http_limits.py", "time.monotonic"): (
        "measures how soon a real server closes a slow connection"
    ),
    ("tests/integration/test_http_limits.py", "time.time"): (
        "signs webhooks with a timestamp the server checks against its own clock"
    ),
    ("tests/integration/test_limits.py", "asyncio.sleep"): (
        "handlers hold their slot for a moment so claims in real time overlap them"
    ),
    ("tests/integration/triggerer_process.py", "asyncio.sleep"): (
        "a subprocess reports its state to the test reading its output"
    ),
}


def _hits() -> set[tuple[str, str, int]]:
    found = set()
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel == "tests/test_no_real_time.py":
                continue  # names the patterns it looks for
            for number, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                for what, pattern in FORBIDDEN.items():
                    if pattern.search(code):
                        found.add((rel, what, number))
    return found


def test_time_is_read_and_waited_for_only_through_a_clock() -> None:
    hits = _hits()
    unexplained = sorted(h for h in hits if (h[0], h[1]) not in ALLOWED)
    assert not unexplained, (
        "real time used outside orchestrator/clock.py; take a Clock (ctx.clock in "
        "handlers) or wait on an event:\n"
        + "\n".join(f"  {rel}:{n}: {what}" for rel, what, n in unexplained)
    )


def test_every_allowed_exception_is_still_needed() -> None:
    used = {(rel, what) for rel, what, _n in _hits()}
    stale = sorted(set(ALLOWED) - used)
    assert not stale, f"allowed but no longer used (remove from ALLOWED): {stale}"
