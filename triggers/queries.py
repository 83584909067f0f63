"""Named queries of the built-in sources: ``triggers/sql/*.sql``."""

from __future__ import annotations

from orchestrator.store.queries import named_queries


class SourceQueries:
    """``SQL.landing_moves_due`` is the text of ``-- name: landing_moves_due``."""

    def __getattr__(self, name: str) -> str:
        try:
            return named_queries("triggers")[name]
        except KeyError:
            raise AttributeError(f"no named query {name!r} in triggers/sql") from None


SQL = SourceQueries()
