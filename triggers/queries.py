"""Named queries of the built-in sources: ``triggers/sql/*.sql``, read as
``SQL.<name>`` with every name typed (``triggers/query_names.py``)."""

from __future__ import annotations

from orchestrator.store.queries import typed_queries
from triggers.query_names import SourceQueryNames

SQL = typed_queries("triggers", SourceQueryNames)
