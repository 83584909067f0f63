"""The lineage graph: datasets, and the workflows (and their tasks) that
produce and consume them.

Built from the current versions of the registered workflows: a task's
``outlets`` make its workflow a producer of each dataset, its ``inlets`` and
the workflow's dataset triggers a consumer. Updates recorded from outside
(the API, Kafka) add datasets no workflow declares. The graph is kept per
process and built again only when the set of current versions changes (one
small query tells), so a query costs a walk in memory plus one query for the
last updates and run states of the nodes it returns.

An outlet whose URI is a template (``s3://lake/sales/{{ run.logical_date }}``)
is one dataset node named by the template; its updates are found by the
URIs it rendered to (a ``*`` wildcard in place of each template).
"""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import asyncpg

from orchestrator.compiled import SpecCache
from orchestrator.dataset_refs import DatasetRef
from orchestrator.dataset_triggers import DatasetTrigger
from orchestrator.errors import OrchestratorError
from orchestrator.globs import glob_regex
from orchestrator.spec import WorkflowSpec
from orchestrator.store import SQL

__all__ = ["DatasetNode", "Graph", "Lineage", "LineageView", "freshness"]

Direction = Literal["upstream", "downstream", "both"]
_TEMPLATE = re.compile(r"\{\{.*?\}\}")


@dataclass(slots=True)
class DatasetNode:
    uri: str
    producers: list[tuple[str, str]] = field(default_factory=list)
    """(workflow, task) that write it."""
    consumers: list[tuple[str, str]] = field(default_factory=list)
    """(workflow, task or ``trigger``) that read it."""
    fresh_within: timedelta | None = None
    cron: str | None = None
    pattern: re.Pattern[str] | None = None
    """For a templated URI: what its rendered URIs look like."""


@dataclass(slots=True)
class Graph:
    """Datasets and workflows, with edges both ways (ids: ``dataset:URI``,
    ``workflow:NAME``)."""

    datasets: dict[str, DatasetNode] = field(default_factory=dict)
    workflows: set[str] = field(default_factory=set)
    specs: dict[str, WorkflowSpec] = field(default_factory=dict)
    """The current spec of each workflow in the graph."""
    down: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    up: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))

    def dataset(self, uri: str) -> DatasetNode:
        node = self.datasets.get(uri)
        if node is None:
            node = self.datasets[uri] = DatasetNode(uri)
            if "{{" in uri:
                node.pattern = glob_regex(_TEMPLATE.sub("*", uri))
        return node

    def edge(self, source: str, target: str) -> None:
        self.down[source].add(target)
        self.up[target].add(source)

    def add(self, spec: WorkflowSpec) -> None:
        wf = f"workflow:{spec.name}"
        self.workflows.add(spec.name)
        self.specs[spec.name] = spec
        for task in spec.tasks:
            for ref in task.outlets:
                node = self._declared(ref)
                node.producers.append((spec.name, task.id))
                self.edge(wf, f"dataset:{ref.uri}")
            for ref in task.inlets:
                self._declared(ref).consumers.append((spec.name, task.id))
                self.edge(f"dataset:{ref.uri}", wf)
        for trigger in spec.triggers:
            if isinstance(trigger, DatasetTrigger):
                for uri in trigger.uris:
                    self.dataset(uri).consumers.append((spec.name, "trigger"))
                    self.edge(f"dataset:{uri}", wf)

    def _declared(self, ref: DatasetRef) -> DatasetNode:
        node = self.dataset(ref.uri)
        if ref.fresh_within is not None:
            node.fresh_within = ref.max_age
        if ref.cron is not None:
            node.cron = ref.cron
        return node

    def walk(self, start: str, direction: Direction, depth: int | None) -> list[str]:
        """Node ids reachable from ``start`` (itself first), breadth first."""
        seen = {start: 0}
        order = [start]
        queue = deque([start])
        sides = [self.up] if direction == "upstream" else [self.down]
        if direction == "both":
            sides = [self.up, self.down]
        while queue:
            node = queue.popleft()
            if depth is not None and seen[node] >= depth:
                continue
            for side in sides:
                for nxt in sorted(side.get(node, ())):
                    if nxt not in seen:
                        seen[nxt] = seen[node] + 1
                        order.append(nxt)
                        queue.append(nxt)
        return order


def freshness(node: DatasetNode | None, last_update: datetime | None, now: datetime) -> str | None:
    """``fresh``, ``stale`` or ``never`` (not updated yet) for a dataset that
    declares ``fresh_within``; None for one that declares nothing.

    Without a cron it is stale once its last update is older than
    ``fresh_within``. With a cron, updates are expected at its ticks: it is
    stale once the newest tick more than ``fresh_within`` ago has no update
    at or after it."""
    if node is None or node.fresh_within is None:
        return None
    if last_update is None:
        return "never"
    if node.cron is None:
        return "stale" if now - last_update > node.fresh_within else "fresh"
    from croniter import croniter

    due = croniter(node.cron, now - node.fresh_within).get_prev(datetime)
    return "stale" if last_update < due else "fresh"


@dataclass(slots=True)
class LineageView:
    """What a lineage query returns: nodes (datasets with their last update
    and freshness, workflows with their last run's state) and edges."""

    nodes: list[dict[str, Any]]
    edges: list[dict[str, str]]

    def as_json(self) -> dict[str, Any]:
        return {"nodes": self.nodes, "edges": self.edges}


class UnknownNodeError(OrchestratorError, LookupError):
    """Neither a dataset nor a workflow of that name is known."""


class Lineage:
    """The graph of this database's workflows, rebuilt when their current versions change."""

    def __init__(self, specs: SpecCache | None = None) -> None:
        self.specs = specs or SpecCache()
        self._graph = Graph()
        self._fingerprint: str | None = None
        self._updated: set[str] = set()
        self._lock = asyncio.Lock()

    async def graph(self, conn: asyncpg.Connection) -> Graph:
        async with self._lock:
            fingerprint = await conn.fetchval(SQL.workflows_fingerprint)
            if fingerprint != self._fingerprint:
                graph = Graph()
                for row in await conn.fetch(SQL.current_specs):
                    graph.add((await self.specs.get(conn, row["current_version"])).spec)
                self._graph, self._fingerprint = graph, fingerprint
            return self._graph

    async def query(
        self,
        conn: asyncpg.Connection,
        start: str,
        *,
        direction: Direction = "both",
        depth: int | None = None,
        now: datetime,
    ) -> LineageView:
        """The graph around ``start``: a dataset URI or a workflow name."""
        graph = await self.graph(conn)
        node_id = self._node_id(graph, start)
        if node_id is None:
            if await conn.fetchval(SQL.dataset_known, start):
                node_id = f"dataset:{start}"
            else:
                raise UnknownNodeError(f"no dataset or workflow named {start!r}")
        ids = graph.walk(node_id, direction, depth)
        return await self._view(conn, graph, ids, now)

    @staticmethod
    def _node_id(graph: Graph, start: str) -> str | None:
        if start in graph.datasets:
            return f"dataset:{start}"
        if start in graph.workflows:
            return f"workflow:{start}"
        for node in graph.datasets.values():  # a rendered URI of a templated one
            if node.pattern is not None and node.pattern.match(start):
                return f"dataset:{node.uri}"
        return None

    async def _view(
        self, conn: asyncpg.Connection, graph: Graph, ids: Sequence[str], now: datetime
    ) -> LineageView:
        uris = [i.removeprefix("dataset:") for i in ids if i.startswith("dataset:")]
        names = [i.removeprefix("workflow:") for i in ids if i.startswith("workflow:")]
        updates = await last_updates(conn, graph, uris)
        runs = {r["workflow"]: r for r in await conn.fetch(SQL.last_runs, names)} if names else {}
        nodes: list[dict[str, Any]] = []
        for i in ids:
            if i.startswith("dataset:"):
                uri = i.removeprefix("dataset:")
                nodes.append(dataset_json(graph.datasets.get(uri), uri, updates.get(uri), now))
            else:
                name = i.removeprefix("workflow:")
                run = runs.get(name)
                nodes.append(
                    {
                        "id": i,
                        "kind": "workflow",
                        "name": name,
                        "last_run": {"id": run["id"], "state": run["state"]} if run else None,
                    }
                )
        chosen = set(ids)
        edges = []
        for source in ids:
            for target in sorted(graph.down.get(source, ())):
                if target in chosen:
                    tasks = _edge_tasks(graph, source, target)
                    edges.append({"from": source, "to": target, **tasks})
        return LineageView(nodes, edges)


def _edge_tasks(graph: Graph, source: str, target: str) -> dict[str, str]:
    """Which tasks (or the trigger) make the edge."""
    if source.startswith("workflow:"):
        wf, uri = source.removeprefix("workflow:"), target.removeprefix("dataset:")
        tasks = [t for w, t in graph.datasets[uri].producers if w == wf]
        return {"relation": "produces", "tasks": ",".join(sorted(set(tasks)))}
    uri, wf = source.removeprefix("dataset:"), target.removeprefix("workflow:")
    tasks = [t for w, t in graph.datasets[uri].consumers if w == wf]
    return {"relation": "consumes", "tasks": ",".join(sorted(set(tasks)))}


async def last_updates(
    conn: asyncpg.Connection, graph: Graph, uris: Iterable[str]
) -> dict[str, asyncpg.Record]:
    """The newest update of each dataset (for a templated one: of any URI it
    rendered to), by the URI the graph knows it by."""
    wanted = list(uris)
    exact = [u for u in wanted if "{{" not in u]
    found = {r["uri"]: r for r in await conn.fetch(SQL.datasets_last_updates, exact)}
    templated = [u for u in wanted if "{{" in u]
    if templated:
        for row in await conn.fetch(SQL.all_datasets_last_updates):
            for uri in templated:
                node = graph.datasets.get(uri)
                if node is not None and node.pattern is not None and node.pattern.match(row["uri"]):
                    best = found.get(uri)
                    if best is None or row["last_updated_at"] > best["last_updated_at"]:
                        found[uri] = row
    return found


def dataset_json(
    node: DatasetNode | None, uri: str, update: Mapping[str, Any] | None, now: datetime
) -> dict[str, Any]:
    last = update["last_updated_at"] if update is not None else None
    return {
        "id": f"dataset:{uri}",
        "kind": "dataset",
        "uri": uri,
        "last_update": last.isoformat() if last else None,
        "updates": update["updates"] if update is not None else 0,
        "fresh_within_s": node.fresh_within.total_seconds() if node and node.fresh_within else None,
        "freshness": freshness(node, last, now),
        "producers": [f"{w}.{t}" for w, t in node.producers] if node else [],
        "consumers": [f"{w}.{t}" for w, t in node.consumers] if node else [],
    }


async def dataset_list(
    conn: asyncpg.Connection, lineage: Lineage, now: datetime
) -> list[dict[str, Any]]:
    """Every dataset declared or updated, with its last update and freshness."""
    graph = await lineage.graph(conn)
    rows = await conn.fetch(SQL.all_datasets_last_updates)
    declared = sorted(graph.datasets)
    updates = await last_updates(conn, graph, declared)
    out = [dataset_json(graph.datasets[u], u, updates.get(u), now) for u in declared]
    known = set(declared)
    covered = {
        r["uri"]
        for r in rows
        for n in graph.datasets.values()
        if n.pattern is not None and n.pattern.match(r["uri"])
    }
    out += [
        dataset_json(None, r["uri"], r, now)
        for r in rows
        if r["uri"] not in known and r["uri"] not in covered
    ]
    return sorted(out, key=lambda d: d["uri"])
