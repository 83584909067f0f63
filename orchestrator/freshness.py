"""Freshness: a dataset that declares ``fresh_within`` (and optionally the
``cron`` of its expected updates) is stale once its last update is too old
(:func:`orchestrator.lineage.freshness`). ``datasets`` and ``lineage`` show it
at read time; this watch checks every dataset periodically (in the scheduler
role) and, for each stale one, raises ``dataset_stale`` through the alert
rules of the workflows that read or write it (and the project's): once per
stale spell, keyed by the dataset and the update it went stale after, so
several schedulers and restarts raise it once and the next spell raises it
again. It also logs a WARNING and counts ``orchestrator_dataset_stale_alerts``
when this process first sees a spell, with the ``orchestrator_datasets_stale``
gauge holding how many are stale now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from orchestrator.alert_spec import AlertKind
from orchestrator.clock import Clock
from orchestrator.lineage import Graph, Lineage, dataset_list
from orchestrator.metrics import METRICS
from orchestrator.plan_facts import Happened
from orchestrator.spec import WorkflowSpec

if TYPE_CHECKING:
    from orchestrator.engine import Engine

log = logging.getLogger(__name__)

__all__ = ["FreshnessWatch"]


class FreshnessWatch:
    """Finds datasets gone stale and raises their alerts. Which are stale is
    also kept in memory, for the log line: after a restart a dataset still
    stale is logged once more (its alert is not raised again)."""

    def __init__(self, engine: Engine, clock: Clock, *, interval_s: float = 60.0) -> None:
        self.engine = engine
        self.clock = clock
        self.interval_s = interval_s
        self.lineage = Lineage(engine.specs)
        self.stale: set[str] = set()
        self.raised = 0
        """Alerts this watch raised (across every check)."""
        self._task: asyncio.Task[None] | None = None

    async def check(self) -> list[str]:
        """Check every dataset now: raise the alerts of those stale; returns
        those newly stale since the last check of this process."""
        async with self.engine.unit() as (conn, notices):
            found = await dataset_list(conn, self.lineage, self.clock.now())
            stale = {d["uri"]: d for d in found if d["freshness"] == "stale"}
            raises = []
            graph = await self.lineage.graph(conn)
            for uri, d in stale.items():
                raises += self.engine.alerts.dataset_raises(
                    _happened(uri, d), _workflows_of(graph, uri)
                )
            if raises:
                self.raised += await self.engine.alerts.write(conn, raises, notices)
        newly = sorted(set(stale) - self.stale)
        for uri in newly:
            d = stale[uri]
            log.warning(
                "dataset %s is stale: last update %s, expected within %ss",
                uri,
                d["last_update"],
                d["fresh_within_s"],
            )
        if newly:
            METRICS.dataset_stale_alerts.inc(len(newly))
        for uri in sorted(self.stale - set(stale)):
            log.info("dataset %s is fresh again", uri)
        METRICS.datasets_stale.set(len(stale))
        self.stale = set(stale)
        return newly

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="dataset-freshness")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:
                log.exception("dataset freshness check failed; trying again later")
            await self.clock.sleep(self.interval_s)


def _happened(uri: str, d: dict[str, Any]) -> Happened:
    last = datetime.fromisoformat(d["last_update"])
    detail = (
        f"dataset {uri} is stale: last update {d['last_update']}, "
        f"expected within {d['fresh_within_s']:g}s"
    )
    return Happened(
        AlertKind.DATASET_STALE.value,
        None,
        "",
        "",
        detail=detail,
        dataset=uri,
        stale_after=last,
    )


def _workflows_of(graph: Graph, uri: str) -> list[WorkflowSpec]:
    """The specs of the workflows that write or read ``uri``, writers first."""
    node = graph.datasets[uri]
    names = dict.fromkeys(w for w, _ in node.producers + node.consumers)
    return [graph.specs[n] for n in names if n in graph.specs]
