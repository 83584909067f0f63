"""Files seen in the landing zone and not complete yet, and when each is
looked at next (:mod:`sources.files` does the looking).

Files still settling wait on a heap of next-look times, so nothing is polled
busily; files waiting for a marker are parked per directory until something
changes there (or the next rescan offers them again).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import posixpath
from collections import defaultdict
from dataclasses import dataclass

from sources.completeness import Observation, Rule

__all__ = ["Candidate", "CheckSchedule"]


@dataclass(slots=True)
class Candidate:
    due: float | None = None
    """Next look (seconds on the source's clock); None while parked or being checked."""
    observation: Observation | None = None
    waiting_for: str = "a first look"
    checking: bool = False
    changed: bool = False
    """Something changed in its directory while it was being checked."""
    rule: Rule | None = None
    """What the triggers matching it require, worked out once (None: not yet,
    or the triggers changed)."""


class CheckSchedule:
    """When each file of ``pending`` is looked at next."""

    def __init__(self, pending: dict[str, Candidate]) -> None:
        self._pending = pending
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._parked: dict[str, set[str]] = defaultdict(set)
        self.wake = asyncio.Event()
        """Set when the earliest next look moved earlier."""

    def schedule(self, rel: str, cand: Candidate, when: float) -> None:
        if self._parked:
            directory = posixpath.dirname(rel)
            parked = self._parked.get(directory)
            if parked is not None:
                parked.discard(rel)
                if not parked:
                    del self._parked[directory]
        cand.due = when
        heapq.heappush(self._heap, (when, next(self._seq), rel))
        if self._heap[0][2] == rel:
            self.wake.set()

    def park(self, rel: str, cand: Candidate) -> None:
        cand.due = None
        self._parked[posixpath.dirname(rel)].add(rel)

    def unpark(self, directory: str, now: float) -> None:
        for rel in self._parked.pop(directory, set()):
            cand = self._pending.get(rel)
            if cand is not None and cand.due is None and not cand.checking:
                self.schedule(rel, cand, now)

    def pop_due(self, now: float, limit: int) -> list[str]:
        """Up to ``limit`` files due by ``now``, marked as being checked."""
        due: list[str] = []
        while self._heap and self._heap[0][0] <= now and len(due) < limit:
            when, _seq, rel = heapq.heappop(self._heap)
            cand = self._pending.get(rel)
            if cand is None or cand.due != when or cand.checking:
                continue  # superseded by a later schedule
            cand.due = None
            cand.checking = True
            due.append(rel)
        return due

    def next_in(self, now: float) -> float | None:
        """Seconds until the next look is due (None: none is)."""
        return max(0.0, self._heap[0][0] - now) if self._heap else None
