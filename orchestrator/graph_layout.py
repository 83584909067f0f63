"""A layered drawing of a workflow's DAG, computed on the server.

Tasks go in columns by their longest path from a root (left to right, so an
edge always points right); within a column they are ordered by a few sweeps of
the barycenter heuristic, which keeps edge crossings low on the DAGs
workflows have (tens to a few hundred tasks). The result is plain
coordinates: any client draws it without a layout library of its own, and
the same version always gets the same picture.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

NODE_W = 150
NODE_H = 40
GAP_X = 48
GAP_Y = 20
MARGIN = 16
#: Down-and-up ordering sweeps; more barely changes the pictures of real DAGs.
SWEEPS = 4


@dataclass(frozen=True, slots=True)
class Placed:
    id: str
    layer: int
    order: int
    x: float
    y: float


@dataclass(frozen=True, slots=True)
class Layout:
    nodes: list[Placed]
    width: float
    height: float


def _layers(order: Sequence[str], upstream: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Each task's column: one past its deepest upstream (roots in column 0)."""
    layer: dict[str, int] = {}
    pending = list(order)
    while pending:  # the spec is acyclic (validated), so every pass places some
        rest = []
        for task in pending:
            ups = upstream.get(task, ())
            if all(u in layer for u in ups):
                layer[task] = 1 + max((layer[u] for u in ups), default=-1)
            else:
                rest.append(task)
        if len(rest) == len(pending):
            raise ValueError(f"the graph has a cycle through {', '.join(sorted(rest))}")
        pending = rest
    return layer


def _centre(task: str, current: int, neighbours: Sequence[str], where: Mapping[str, int]) -> float:
    """The mean position of ``task``'s placed neighbours (its own if it has none)."""
    near = [where[n] for n in neighbours if n in where]
    return sum(near) / len(near) if near else float(current)


def _sweep(
    columns: list[list[str]], neighbours: Mapping[str, Sequence[str]], forward: bool
) -> None:
    indices = range(1, len(columns)) if forward else range(len(columns) - 2, -1, -1)
    for i in indices:
        fixed = columns[i - 1] if forward else columns[i + 1]
        where = {task: n for n, task in enumerate(fixed)}
        keyed = sorted(
            enumerate(columns[i]),
            key=lambda p: (_centre(p[1], p[0], neighbours.get(p[1], ()), where), p[0]),
        )
        columns[i] = [task for _, task in keyed]


def layout(order: Sequence[str], upstream: Mapping[str, Sequence[str]]) -> Layout:
    """Place the tasks ``order`` names (spec order breaks ties) given each one's upstreams."""
    layer = _layers(order, upstream)
    downstream: dict[str, list[str]] = {}
    for task in order:
        for up in upstream.get(task, ()):
            downstream.setdefault(up, []).append(task)
    columns: list[list[str]] = [[] for _ in range(max(layer.values(), default=-1) + 1)]
    for task in order:
        columns[layer[task]].append(task)
    for _ in range(SWEEPS):
        _sweep(columns, upstream, forward=True)
        _sweep(columns, downstream, forward=False)
    tallest = max((len(c) for c in columns), default=0)
    height = 2 * MARGIN + tallest * NODE_H + max(tallest - 1, 0) * GAP_Y
    nodes: list[Placed] = []
    for n, column in enumerate(columns):
        # Short columns are centred against the tallest one.
        top = MARGIN + (tallest - len(column)) * (NODE_H + GAP_Y) / 2
        for k, task in enumerate(column):
            nodes.append(
                Placed(task, n, k, MARGIN + n * (NODE_W + GAP_X), top + k * (NODE_H + GAP_Y))
            )
    width = 2 * MARGIN + len(columns) * NODE_W + max(len(columns) - 1, 0) * GAP_X
    return Layout(nodes, width, height)
