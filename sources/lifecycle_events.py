"""The CloudEvents 1.0 (structured JSON) the lifecycle relay publishes, from
the rows of its window (``lifecycle_window`` in ``sources/sql/lifecycle.sql``).

Each event's ``id`` names its row (``transition-<id>``, ``dataset-update-<id>``,
``alert-<id>``), so a repeat after a relay's crash carries the same id. The
Kafka key is the run id (a dataset update made outside a run: its URI).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import orjson

TRANSITION, DATASET_UPDATE, ALERT = 0, 1, 2

_JSON_OPTIONS = orjson.OPT_UTC_Z  # RFC 3339 times in UTC, as "...Z"
_NONE: Mapping[int, str | None] = MappingProxyType({})


def _subject(run_id: int, task_id: str | None) -> str:
    return f"runs/{run_id}/tasks/{task_id}" if task_id else f"runs/{run_id}"


def cloud_event(
    row: Mapping[str, Any], source: str, workflows: Mapping[int, str | None] = _NONE
) -> dict[str, Any]:
    """The event of one window row; a transition's workflow is its row's, else
    its run's in ``workflows``."""
    stage, run_id, task_id = row["stage"], row["run_id"], row["task_id"]
    if stage == TRANSITION:
        scope = "task" if task_id else "run"
        return _event(
            f"transition-{row['id']}",
            source,
            f"orchestrator.{scope}.{row['to_state']}",
            _subject(run_id, task_id),
            row,
            {
                "run_id": run_id,
                "workflow": row["workflow"] or workflows.get(run_id),
                "task_id": task_id,
                "from_state": row["from_state"],
                "to_state": row["to_state"],
                "attempt": row["attempt"],
                "actor": row["actor"],
                "reason": row["reason"],
            },
        )
    if stage == DATASET_UPDATE:
        metadata = row["metadata"]
        return _event(
            f"dataset-update-{row['id']}",
            source,
            "orchestrator.dataset.updated",
            f"datasets/{row['uri']}",
            row,
            {
                "uri": row["uri"],
                "event_id": row["event_id"],
                "workflow": row["workflow"],
                "run_id": run_id,
                "task_id": task_id,
                "logical_date": row["logical_date"],
                "metadata": orjson.loads(metadata) if metadata is not None else {},
            },
        )
    return _event(
        f"alert-{row['id']}",
        source,
        f"orchestrator.alert.{row['kind']}",
        _subject(run_id, task_id) if run_id is not None else f"datasets/{row['uri']}",
        row,
        {
            "alert_id": row["id"],
            "kind": row["kind"],
            "rule": row["rule"],
            "workflow": row["workflow"],
            "run_id": run_id,
            "task_id": task_id,
            "dataset": row["uri"],
            "attempt": row["attempt"],
            "error": row["error"],
            "detail": row["detail"],
        },
    )


def _event(
    event_id: str,
    source: str,
    type_: str,
    subject: str,
    row: Mapping[str, Any],
    data: dict[str, Any],
) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": source,
        "type": type_,
        "subject": subject,
        "time": row["at"],
        "datacontenttype": "application/json",
        "data": data,
    }


def key_of(row: Mapping[str, Any]) -> bytes:
    """The Kafka key of a window row: its run id, else its dataset's URI."""
    run_id = row["run_id"]
    return (str(run_id) if run_id is not None else row["uri"]).encode()


def encode(
    row: Mapping[str, Any], source: str, workflows: Mapping[int, str | None] = _NONE
) -> tuple[bytes, bytes]:
    """(Kafka key, value) of one window row."""
    return key_of(row), orjson.dumps(cloud_event(row, source, workflows), option=_JSON_OPTIONS)


#: Every event's JSON starts so (its first attribute), and only there: a
#: quote inside a JSON string is always escaped.
_HEAD = b'{"specversion":'
_BETWEEN = b"}," + _HEAD


def encode_values(
    rows: Sequence[Mapping[str, Any]], source: str, workflows: Mapping[int, str | None] = _NONE
) -> list[bytes]:
    """The Kafka values of ``rows``, as :func:`encode` makes them.

    One JSON encoding of them all, cut between the events, costs a fraction
    of one encoding each (the call, not the JSON, is most of an event's
    cost). A cut can only fall inside an event where a dataset update's
    metadata holds an object starting like an event: then there are more
    pieces than events, and each is encoded alone."""
    events = [cloud_event(row, source, workflows) for row in rows]
    if not events:
        return []
    whole = orjson.dumps(events, option=_JSON_OPTIONS)  # [{"specversion":...},...]
    pieces = whole[len(_HEAD) + 1 : -2].split(_BETWEEN)
    if len(pieces) != len(events):
        return [orjson.dumps(event, option=_JSON_OPTIONS) for event in events]
    return [b"".join((_HEAD, piece, b"}")) for piece in pieces]
