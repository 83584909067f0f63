"""Named SQL: every ``.sql`` file under ``store/sql`` holds ``-- name: X`` blocks
(and so does each source plugin's ``sql`` folder: :func:`named_queries`)."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_HEADER = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def parse_named(text: str) -> dict[str, str]:
    parts = _HEADER.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    out: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in out:
            raise ValueError(f"query {name!r} is defined twice")
        out[name] = body.strip()
    return out


@cache
def queries() -> dict[str, str]:
    return named_queries("orchestrator.store")


@cache
def named_queries(package: str) -> dict[str, str]:
    """The named queries of ``package/sql/*.sql`` (a source plugin's ``store``)."""
    found: dict[str, str] = {}
    for entry in sorted(resources.files(package).joinpath("sql").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            for name, sql in parse_named(entry.read_text("utf-8")).items():
                if name in found:
                    raise ValueError(f"query {name!r} is defined in two files")
                found[name] = sql
    return found


class Q:
    """Attribute access to named queries: ``Q.claim`` is the text of ``-- name: claim``."""

    def __getattr__(self, name: str) -> str:
        try:
            return queries()[name]
        except KeyError:
            raise AttributeError(f"no named query {name!r}") from None


SQL = Q()
