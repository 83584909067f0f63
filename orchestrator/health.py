"""Liveness: the process's loops come round, or ``/healthz`` says which does not.

Each long-running loop (the worker's claim loop, the triggerer) calls
:meth:`Liveness.beat` every time it comes round; both come round at least
every poll interval, idle or not. A loop that has not beaten for longer than
its allowance is stuck (wedged in a call that never returns, or dead), and
``/healthz`` answers 503 naming it, so a supervisor restarts the process.
"""

from __future__ import annotations

from orchestrator.clock import monotonic


class Liveness:
    def __init__(self, stale_s: float) -> None:
        self.stale_s = stale_s
        self._beats: dict[str, float] = {}

    def beat(self, loop: str) -> None:
        self._beats[loop] = monotonic()

    def forget(self, loop: str) -> None:
        self._beats.pop(loop, None)

    def stuck(self) -> list[str]:
        """The loops that have not come round within ``stale_s``."""
        now = monotonic()
        return sorted(name for name, at in self._beats.items() if now - at > self.stale_s)
