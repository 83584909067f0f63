"""Triggers on workflows: field checks, template roots, cross-workflow conflicts."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from orchestrator.loader import load_path
from orchestrator.registry import HandlerRegistry
from orchestrator.spec import TaskSpec, WorkflowSpec
from orchestrator.validation import collect_errors
from sources.models import FileTrigger, KafkaTrigger, ScheduleTrigger

NOOP = (TaskSpec(id="a", handler="noop"),)


def registry() -> HandlerRegistry:
    reg = HandlerRegistry()

    async def noop(ctx: object) -> None:
        return None

    reg.register("noop", noop)
    return reg


def test_trigger_fields_are_checked_when_the_spec_is_built() -> None:
    with pytest.raises(ValidationError, match="not a valid cron expression"):
        ScheduleTrigger(cron="every day")
    with pytest.raises(ValidationError, match="unknown time zone"):
        ScheduleTrigger(cron="0 * * * *", timezone="Mars/Olympus")
    with pytest.raises(ValidationError, match=r"without '\.\.'"):
        FileTrigger(glob="../outside/*.csv")
    with pytest.raises(ValidationError, match="topic"):
        KafkaTrigger(topic="bad topic name")


def test_event_templates_may_only_read_the_event() -> None:
    spec = WorkflowSpec(
        name="w",
        tasks=NOOP,
        triggers=(
            KafkaTrigger(topic="t", filter="paylod.kind", params={"x": "{{ params.y }}"}),
            ScheduleTrigger(cron="0 * * * *", filter="meta.x"),
        ),
    )
    messages = [e.describe() for e in collect_errors(spec, registry(), file="w.py")]
    assert any(
        "triggers[0] (kafka) filter" in m and "did you mean 'payload'" in m for m in messages
    )
    assert any("triggers[0] (kafka) params.x" in m and "'params'" in m for m in messages)
    assert any("triggers[1] (schedule)" in m and "no event to filter" in m for m in messages)
    assert all(m.startswith("w.py, workflow 'w'") for m in messages)


def test_a_bad_filter_expression_is_reported() -> None:
    spec = WorkflowSpec(name="w", tasks=NOOP, triggers=(KafkaTrigger(topic="t", filter="a ==="),))
    [error] = collect_errors(spec, registry())
    assert "triggers[0] (kafka) filter" in error.describe()


def test_workflows_sharing_a_hook_must_agree_on_auth(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "name: a\ntasks: [{id: t, handler: noop}]\n"
        "triggers: [{source: webhook, hook: sales, auth: bearer}]\n"
    )
    (tmp_path / "b.yaml").write_text(
        "name: b\ntasks: [{id: t, handler: noop}]\n"
        "triggers: [{source: webhook, hook: sales, auth: standard}]\n"
    )
    result = load_path(tmp_path, base=registry())
    assert result.workflows == {}
    assert len(result.errors) == 2
    assert all("conflicting auth settings" in e.describe() for e in result.errors)
    assert {e.file for e in result.errors} == {str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")}
