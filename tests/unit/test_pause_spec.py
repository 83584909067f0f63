"""owner, tags and on_pause in YAML: loaded, validated with messages naming
the file, the workflow and the field."""

from __future__ import annotations

from pathlib import Path

from loader_support import messages, write

from orchestrator.loader import load_path
from orchestrator.registry import HandlerRegistry
from orchestrator.spec import OnPause


def test_owner_tags_and_on_pause_load_from_yaml(tmp_path: Path, base: HandlerRegistry) -> None:
    write(
        tmp_path / "sales.yaml",
        """
        name: sales
        owner: team-finance
        tags: [finance, "team:data"]
        on_pause: coalesce
        tasks:
          - {id: a, handler: noop}
        """,
    )
    write(tmp_path / "plain.yaml", "name: plain\ntasks:\n  - {id: a, handler: noop}\n")
    result = load_path(tmp_path, base=base)
    assert result.ok, messages(result)
    sales, plain = result.workflows["sales"], result.workflows["plain"]
    assert (sales.owner, sales.tags, sales.on_pause) == (
        "team-finance",
        ("finance", "team:data"),
        OnPause.COALESCE,
    )
    assert (plain.owner, plain.tags, plain.on_pause) == (None, (), OnPause.BUFFER)


def test_bad_owner_tags_and_on_pause_are_named(tmp_path: Path, base: HandlerRegistry) -> None:
    cases = {
        "policy": ("on_pause: later", "on_pause"),
        "tag_text": ('tags: "finance"', "tags"),
        "tag_space": ('tags: ["two words"]', "tags"),
        "tag_twice": ("tags: [a, a]", "tag 'a' is listed twice"),
        "owner_list": ("owner: [a, b]", "owner"),
    }
    for name, (line, _) in cases.items():
        write(
            tmp_path / f"{name}.yaml",
            f"name: {name}\n{line}\ntasks:\n  - {{id: a, handler: noop}}\n",
        )
    result = load_path(tmp_path, base=base)
    found = messages(result)
    for name, (_, expected) in cases.items():
        [message] = [m for m in found if f"{name}.yaml" in m]
        assert expected in message, message
    assert not result.workflows
