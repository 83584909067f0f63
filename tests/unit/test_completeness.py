"""When a landing-zone file counts as arrived: pure rules, time passed in."""

from __future__ import annotations

import pytest

from sources.completeness import (
    MarkerNames,
    Observation,
    Rule,
    Stat,
    Verdict,
    is_ignored,
    judge,
    render_marker,
)
from sources.models import FileTrigger

QUIET = Rule(quiet_s=0.5)


@pytest.mark.parametrize(
    ("path", "ignored"),
    [
        ("crm/a.csv", False),
        ("a.csv", False),
        ("crm/a.csv.part", True),
        ("crm/a.csv.tmp", True),
        ("crm/.a.csv", True),
        (".hidden", True),
        ("crm/.staging/a.csv", True),
        (".git/HEAD", True),
        ("processed/crm/a.csv", True),
        ("failed/a.csv", True),
        ("crm/processed/a.csv", False),  # only the top-level move targets
        ("crm/a.partial", False),
        ("crm//a.csv", True),
    ],
)
def test_temporary_and_moved_names_are_ignored(path: str, ignored: bool) -> None:
    assert is_ignored(path) is ignored


def look(
    rule: Rule,
    previous: Observation | None,
    stat: Stat,
    now: float,
    markers: tuple[str, ...] = (),
    path: str = "crm/a.csv",
) -> Verdict:
    return judge(rule, previous, stat, frozenset(markers), now, relative_path=path)


def test_quiet_needs_two_looks_quiet_s_apart_with_nothing_changed() -> None:
    first = look(QUIET, None, Stat(10, 1), now=100.0)
    assert not first.complete and first.check_at == 100.5
    # An old mtime proves nothing: the first look never completes a file.
    too_soon = look(QUIET, first.observation, Stat(10, 1), now=100.3)
    assert not too_soon.complete and too_soon.check_at == 100.5
    done = look(QUIET, too_soon.observation, Stat(10, 1), now=100.5)
    assert done.complete and done.waiting_for == ""


def test_growing_file_restarts_the_quiet_period() -> None:
    seen = look(QUIET, None, Stat(10, 1), now=0.0).observation
    for t, size in [(0.5, 20), (1.0, 30), (1.5, 40)]:
        verdict = look(QUIET, seen, Stat(size, int(t * 1e9)), now=t)
        assert not verdict.complete
        assert verdict.check_at == t + 0.5
        seen = verdict.observation
    assert look(QUIET, seen, Stat(40, int(1.5e9)), now=1.9).complete is False
    assert look(QUIET, seen, Stat(40, int(1.5e9)), now=2.0).complete is True


def test_an_mtime_change_alone_restarts_the_quiet_period() -> None:
    seen = look(QUIET, None, Stat(10, 1), now=0.0).observation
    touched = look(QUIET, seen, Stat(10, 2), now=0.6)
    assert not touched.complete and touched.observation.since == 0.6


def test_quiet_zero_is_complete_at_first_look() -> None:
    assert look(Rule(quiet_s=0), None, Stat(1, 1), now=5.0).complete


def test_marker_per_file_and_per_directory() -> None:
    per_file = Rule(quiet_s=None, markers=("{name}.done",))
    waiting = look(per_file, None, Stat(5, 1), now=0.0)
    assert not waiting.complete and waiting.check_at is None
    assert waiting.waiting_for == "marker crm/a.csv.done"
    # Another file's marker does not count.
    assert not look(per_file, None, Stat(5, 1), 0.0, markers=("crm/b.csv.done",)).complete
    assert look(per_file, None, Stat(5, 1), 0.0, markers=("crm/a.csv.done",)).complete

    directory = Rule(quiet_s=None, markers=("_SUCCESS",))
    assert not look(directory, None, Stat(5, 1), 0.0, markers=("other/_SUCCESS",)).complete
    assert look(directory, None, Stat(5, 1), 0.0, markers=("crm/_SUCCESS",)).complete
    assert look(directory, None, Stat(5, 1), 0.0, markers=("_SUCCESS",), path="a.csv").complete


def test_triggers_matching_one_file_must_all_agree() -> None:
    rule = Rule.for_triggers(
        [
            FileTrigger(glob="crm/*", quiet_s=0.2),
            FileTrigger(glob="crm/*.csv", quiet_s=1.0),
            FileTrigger(glob="**/*.csv", complete_when="marker", marker="_SUCCESS"),
        ],
        default_quiet_s=9.0,
    )
    assert rule == Rule(quiet_s=1.0, markers=("_SUCCESS",))
    first = look(rule, None, Stat(1, 1), 0.0, markers=("crm/_SUCCESS",))
    assert not first.complete and first.check_at == 1.0
    assert not look(rule, first.observation, Stat(1, 1), 5.0).complete  # marker gone again
    assert look(rule, first.observation, Stat(1, 1), 1.0, markers=("crm/_SUCCESS",)).complete


def test_files_no_trigger_matches_use_the_default_quiet_period() -> None:
    assert Rule.for_triggers([], default_quiet_s=2.0) == Rule(quiet_s=2.0)


@pytest.mark.parametrize(
    ("template", "name", "rendered"),
    [
        ("{name}.done", "a.csv", "a.csv.done"),
        ("_SUCCESS", "a.csv", "_SUCCESS"),
        ("{name}.{name}.ok", "x", "x.x.ok"),
        ("../{name}.done", "a.csv", None),
        ("sub/_SUCCESS", "a.csv", None),
        ("..", "a.csv", None),
    ],
)
def test_marker_templates_name_a_file_in_the_same_directory(
    template: str, name: str, rendered: str | None
) -> None:
    assert render_marker(template, name) == rendered


def test_an_invalid_marker_template_never_completes_and_says_why() -> None:
    rule = Rule(quiet_s=None, markers=("../escape",))
    verdict = look(rule, None, Stat(1, 1), 0.0, markers=("escape", "crm/../escape"))
    assert not verdict.complete
    assert "not a file name in the same directory" in verdict.waiting_for


def test_marker_files_are_recognised_only_for_marker_triggers() -> None:
    names = MarkerNames(
        [
            FileTrigger(glob="a/*", complete_when="marker", marker="_SUCCESS"),
            FileTrigger(glob="b/*", complete_when="marker", marker="{name}.done"),
            FileTrigger(glob="c/*", marker="{name}.ready"),  # quiet: marker unused
        ]
    )
    assert names.matches("a/_SUCCESS")
    assert names.matches("anywhere/deep/_SUCCESS")
    assert names.matches("b/x.csv.done")
    assert not names.matches("b/.done")  # {name} is at least one character
    assert not names.matches("c/x.csv.ready")
    assert not names.matches("a/_SUCCESS.csv")
    assert not MarkerNames([]).matches("_SUCCESS")
