"""The server-side DAG layout: edges point right, nothing overlaps, and
crossings are undone where the order allows."""

from __future__ import annotations

import pytest

from orchestrator.graph_layout import NODE_H, NODE_W, layout


def test_columns_follow_the_longest_path_and_nodes_never_overlap() -> None:
    upstream = {"a": (), "b": (), "c": ("a", "b"), "d": ("c",), "e": ("a", "d")}
    placed = {p.id: p for p in layout(list(upstream), upstream).nodes}
    assert [placed[t].layer for t in "abcde"] == [0, 0, 1, 2, 3]
    for task, ups in upstream.items():
        for up in ups:
            assert placed[up].x + NODE_W < placed[task].x  # every edge points right
    boxes = [(p.x, p.y) for p in placed.values()]
    for i, (x1, y1) in enumerate(boxes):
        for x2, y2 in boxes[i + 1 :]:
            assert abs(x1 - x2) >= NODE_W or abs(y1 - y2) >= NODE_H


def test_the_order_within_a_column_undoes_crossings() -> None:
    # Spec order would cross a->y and b->x; the sweeps put x beside b.
    upstream = {"a": (), "b": (), "y": ("a",), "x": ("b",)}
    placed = {p.id: p for p in layout(["a", "b", "x", "y"], upstream).nodes}
    assert (placed["a"].y < placed["b"].y) == (placed["y"].y < placed["x"].y)


def test_the_same_graph_gets_the_same_picture_and_a_cycle_is_refused() -> None:
    upstream = {f"t{i}": tuple(f"t{j}" for j in range(i) if (i + j) % 3 == 0) for i in range(30)}
    assert layout(list(upstream), upstream) == layout(list(upstream), upstream)
    with pytest.raises(ValueError, match="cycle"):
        layout(["a", "b"], {"a": ("b",), "b": ("a",)})
