"""New runs as the two JSON documents ``insert_runs`` reads: one array for the
runs, one for the task rows of their versions. Creating N runs then sends two
parameters and does no per-task work here: a run's task instances are the run
joined with its version's rows, in SQL."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import orjson

from orchestrator.compiled import CompiledWorkflow
from orchestrator.engine_types import RunRequest
from orchestrator.errors import OrchestratorError


def run_row(
    run_id: int,
    req: RunRequest,
    compiled: CompiledWorkflow,
    defaults: Mapping[str, Any],
    state: str,
    actor: str,
) -> list[Any]:
    """One run of the ``insert_runs`` document; its params are ``defaults``
    overlaid with those asked for."""
    params = req.params
    if not isinstance(params, dict) and not isinstance(params, Mapping):
        raise OrchestratorError(f"params for {req.workflow!r} must be a JSON object")
    logical_date, interval_end = req.logical_date, req.interval_end
    return [
        run_id,
        req.workflow,
        compiled.version,
        state,
        {**defaults, **params} if defaults or type(params) is not dict else params,
        None if logical_date is None else _stamp(logical_date),
        None if interval_end is None else _stamp(interval_end),
        req.event_id,
        req.actor or actor,
    ]


def runs_document(rows: list[list[Any]]) -> str:
    """The ``insert_runs`` document of :func:`run_row` rows; raises
    :class:`OrchestratorError` naming the workflow whose params are not JSON."""
    try:
        return orjson.dumps(rows).decode()
    except TypeError:
        for row in rows:
            try:
                orjson.dumps(row[4])
            except TypeError as exc:
                raise OrchestratorError(
                    f"params for {row[1]!r} are not JSON-serialisable: {exc}"
                ) from None
        raise


def task_template(versions: Iterable[CompiledWorkflow]) -> str:
    """The task rows of ``versions``, in DAG order, as ``insert_runs`` reads them."""
    return orjson.dumps(
        [
            [
                c.version,
                row.task_id,
                row.state.value,
                row.handler,
                row.pool,
                row.priority,
                row.limited,
                row.concurrency_key,
                row.max_concurrency,
                list(row.needs),
            ]
            for c in versions
            for row in c.rows
        ]
    ).decode()


def _stamp(value: datetime) -> datetime:
    # As the driver sends a timestamp: one without a zone is local time.
    if not isinstance(value, datetime) or value.tzinfo is not None:
        return value
    return value.astimezone()
