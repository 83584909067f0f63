"""Named queries of the built-in sources: ``sources/sql/*.sql``, read as
``SQL.<name>`` with every name typed (``sources/query_names.py``)."""

from __future__ import annotations

from orchestrator.store.queries import typed_queries
from sources.query_names import SourceQueryNames

SQL = typed_queries("sources", SourceQueryNames)
