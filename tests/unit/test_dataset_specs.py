"""Dataset declarations: outlet and inlet URIs, dataset triggers, durations."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from orchestrator.dataset_refs import parse_duration
from orchestrator.dataset_triggers import DatasetTrigger
from orchestrator.datasets import metadata_for, update_from_payload
from orchestrator.spec import TaskSpec, WorkflowSpec


def test_outlets_take_uris_or_mappings_and_keep_versions_of_specs_without_them() -> None:
    task = TaskSpec.model_validate(
        {
            "id": "t",
            "handler": "noop",
            "outlets": [
                "kafka://topic",
                {"uri": "s3://b/{{ run.logical_date }}", "fresh_within": "26h"},
            ],
        }
    )
    assert [o.uri for o in task.outlets] == ["kafka://topic", "s3://b/{{ run.logical_date }}"]
    assert task.outlets[1].max_age == timedelta(hours=26)
    plain = WorkflowSpec(name="w", tasks=(TaskSpec(id="t", handler="noop"),))
    assert b"outlets" not in plain.canonical_json()


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("warehouse.sales", "not a dataset URI"),
        ("s3://b/{{ upstream.x }}", "dataset URIs may use only params, run, task"),
        ({"uri": "s3://b", "fresh_within": "soon"}, "not a duration"),
        ({"uri": "s3://b", "cron": "every day"}, "not a valid cron"),
        ({"uri": "s3://b", "owner": "me"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_outlets_are_refused_naming_what_is_wrong(entry: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TaskSpec.model_validate({"id": "t", "handler": "noop", "outlets": [entry]})


def test_dataset_triggers() -> None:
    trigger = DatasetTrigger.model_validate({"source": "dataset", "all": ["s3://a", "s3://b/*"]})
    assert trigger.slots_of("s3://b/2026") == [1] and trigger.slots_of("s3://a") == [0]
    assert trigger.slots_of("s3://b/2026/x") == []
    assert trigger.target() == "all of s3://a, s3://b/*"
    with pytest.raises(ValidationError, match="exactly one of 'any' and 'all'"):
        DatasetTrigger.model_validate({"source": "dataset", "any": ["s3://a"], "all": ["s3://b"]})
    with pytest.raises(ValidationError, match="exactly one of 'any' and 'all'"):
        DatasetTrigger.model_validate({"source": "dataset"})
    with pytest.raises(ValidationError, match="listed twice"):
        DatasetTrigger.model_validate({"source": "dataset", "any": ["s3://a", "s3://a"]})
    with pytest.raises(ValidationError, match="not a dataset URI"):
        DatasetTrigger.model_validate({"source": "dataset", "any": ["table"]})


def test_a_workflow_round_trips_its_dataset_trigger() -> None:
    spec = WorkflowSpec.model_validate(
        {
            "name": "w",
            "tasks": [{"id": "t", "handler": "noop"}],
            "triggers": [{"source": "dataset", "any": ["s3://a"], "partition": True}],
        }
    )
    again = WorkflowSpec.model_validate_json(spec.canonical_json())
    assert again == spec and again.version == spec.version


def test_durations() -> None:
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("2d") == timedelta(days=2)
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("1 fortnight")


def test_metadata_comes_from_the_output() -> None:
    assert metadata_for({"rows": 3}, "s3://a", "s3://a") == {"rows": 3}
    per = {"outlets": {"s3://a": {"rows": 1}, "s3://b/{{ run.id }}": {"rows": 2}}}
    assert metadata_for(per, "s3://a", "s3://a") == {"rows": 1}
    assert metadata_for(per, "s3://b/{{ run.id }}", "s3://b/7") == {"rows": 2}
    assert metadata_for([1, 2], "s3://a", "s3://a") == {}
    assert "metadata_dropped" in metadata_for({"x": "y" * 20_000}, "s3://a", "s3://a")


def test_updates_from_kafka_messages() -> None:
    update = update_from_payload({"uri": "s3://a", "logical_date": "2026-01-02"}, "kafka:x")
    assert update.logical_date is not None and update.logical_date.isoformat().startswith(
        "2026-01-02"
    )
    assert update.dedup_key == "dataset-update:kafka:x"
    for bad, message in [
        ([], "JSON object"),
        ({"uri": "s3://a", "rows": 1}, "unexpected key"),
        ({"uri": "a"}, "not a dataset URI"),
        ({"uri": "s3://a", "logical_date": "monday"}, "not an ISO 8601 date"),
        ({"uri": "s3://a", "metadata": 3}, "must be a JSON object"),
    ]:
        with pytest.raises(ValueError, match=message):
            update_from_payload(bad, "k")
