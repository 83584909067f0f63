"""The CloudEvents the lifecycle relay publishes, from window rows."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from sources.lifecycle_events import ALERT, DATASET_UPDATE, TRANSITION, encode, encode_values

AT = datetime(2026, 2, 1, 2, 13, 7, 123456, tzinfo=UTC)


def row(stage: int, **values: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict.fromkeys(
        (
            "run_id",
            "task_id",
            "from_state",
            "to_state",
            "attempt",
            "actor",
            "reason",
            "workflow",
            "uri",
            "event_id",
            "logical_date",
            "metadata",
            "rule",
            "kind",
            "error",
            "detail",
        )
    )
    return {**base, "stage": stage, "id": 7, "at": AT, **values}


def test_a_task_transition() -> None:
    key, value = encode(
        row(
            TRANSITION,
            run_id=42,
            task_id="load",
            from_state="running",
            to_state="success",
            attempt=1,
            actor="worker",
            workflow="nightly",
        ),
        "/orchestrator",
    )
    assert key == b"42"
    assert orjson.loads(value) == {
        "specversion": "1.0",
        "id": "transition-7",
        "source": "/orchestrator",
        "type": "orchestrator.task.success",
        "subject": "runs/42/tasks/load",
        "time": "2026-02-01T02:13:07.123456Z",
        "datacontenttype": "application/json",
        "data": {
            "run_id": 42,
            "workflow": "nightly",
            "task_id": "load",
            "from_state": "running",
            "to_state": "success",
            "attempt": 1,
            "actor": "worker",
            "reason": None,
        },
    }


def test_a_run_transition_is_about_the_run() -> None:
    event = orjson.loads(encode(row(TRANSITION, run_id=3, to_state="failed"), "s")[1])
    assert (event["type"], event["subject"]) == ("orchestrator.run.failed", "runs/3")


def test_a_dataset_update_made_outside_a_run_is_keyed_by_its_uri() -> None:
    key, value = encode(
        row(DATASET_UPDATE, uri="s3://lake/x", event_id=9, metadata='{"rows": 3}'), "s"
    )
    event = orjson.loads(value)
    assert key == b"s3://lake/x"
    assert event["id"] == "dataset-update-7"
    assert event["subject"] == "datasets/s3://lake/x"
    assert event["data"]["metadata"] == {"rows": 3}


def test_an_alert() -> None:
    key, value = encode(row(ALERT, run_id=5, kind="run_failed", rule="w:oncall", workflow="w"), "s")
    event = orjson.loads(value)
    assert key == b"5"
    assert (event["id"], event["type"], event["subject"]) == (
        "alert-7",
        "orchestrator.alert.run_failed",
        "runs/5",
    )
    assert event["data"]["rule"] == "w:oncall"


def test_a_page_is_encoded_as_each_of_its_events_alone() -> None:
    page = [
        row(TRANSITION, run_id=1, to_state="running", reason='quote " and },{"specversion":'),
        row(DATASET_UPDATE, run_id=1, uri="s3://lake/x", metadata='{"rows": 3}'),
        row(ALERT, run_id=2, kind="run_failed", detail="}]"),
    ]
    assert encode_values(page, "s") == [encode(r, "s")[1] for r in page]
    assert encode_values([], "s") == []


def test_metadata_that_looks_like_the_next_event_does_not_cut_an_event() -> None:
    tricky = '{"list": [{"a": 1}, {"specversion": "1.0"}]}'
    page = [
        row(TRANSITION, run_id=1, to_state="running"),
        row(DATASET_UPDATE, run_id=1, uri="s3://lake/x", metadata=tricky),
        row(TRANSITION, run_id=1, to_state="success"),
    ]
    values = encode_values(page, "s")
    assert values == [encode(r, "s")[1] for r in page]
    assert orjson.loads(values[1])["data"]["metadata"] == orjson.loads(tricky)
