"""What a JSON document must respect to be stored: checked before it reaches
the database, so that bad input is a 400 naming the field, not a failed
transaction (which, in a shared webhook commit, would also delay the others).

- PostgreSQL's ``jsonb`` refuses the NUL character (``\\u0000``) in strings and keys.
- Nesting is capped at :data:`MAX_DEPTH`: the JSON encoder gives up past 254
  levels, and events and params are embedded in larger documents later.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

MAX_DEPTH = 128
"""Most arrays/objects nested in one another in a stored document."""

_NUL = "\x00"
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")


class Unstorable(NamedTuple):
    path: str
    """Where in the document, e.g. ``params.items[2].name``."""
    reason: str

    def describe(self) -> str:
        return f"{self.path} {self.reason}"


def _child(path: str, key: str) -> str:
    if _PLAIN_KEY.match(key):
        return f"{path}.{key}"
    escaped = key.replace("\\", "\\\\").replace('"', '\\"').replace(_NUL, "\\u0000")
    return f'{path}["{escaped}"]'


_NUL_REASON = "contains a NUL character (\\u0000), which PostgreSQL cannot store"


def unstorable(value: Any, path: str = "body") -> Unstorable | None:
    """The first reason ``value`` (parsed JSON) cannot be stored, or None."""
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        node, where, depth = stack.pop()
        if isinstance(node, str):
            if _NUL in node:
                return Unstorable(where, _NUL_REASON)
        elif isinstance(node, dict | list):
            if depth >= MAX_DEPTH:
                return Unstorable(where, f"is nested deeper than {MAX_DEPTH} levels")
            if isinstance(node, dict):
                for key, item in reversed(node.items()):
                    if _NUL in key:
                        return Unstorable(_child(where, key), "has a key that " + _NUL_REASON)
                    stack.append((item, _child(where, key), depth + 1))
            else:
                for index in range(len(node) - 1, -1, -1):
                    stack.append((node[index], f"{where}[{index}]", depth + 1))
    return None


def may_be_unstorable(raw: bytes) -> bool:
    """A fast test on the JSON text: False means :func:`unstorable` would find
    nothing, so the hot path walks only the rare documents that need it. (A NUL
    can only be written ``\\u0000`` in JSON text; each nesting level opens a bracket.)"""
    return b"\\u0000" in raw or raw.count(b"[") + raw.count(b"{") >= MAX_DEPTH
